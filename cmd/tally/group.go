package main

import (
	"context"
	"errors"
)

// group runs long-lived components (HTTP server, relay, sweeper) that each expose
// Run(ctx) error. The first to return cancels the others; run returns after all have
// returned, with the first error that is not a plain cancellation.
type group struct {
	fns []func(ctx context.Context) error
}

func (g *group) add(fn func(ctx context.Context) error) { g.fns = append(g.fns, fn) }

func (g *group) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(g.fns))
	for _, fn := range g.fns {
		go func() { errc <- fn(ctx) }()
	}
	var first error
	for range g.fns {
		err := <-errc
		cancel()
		if first == nil && err != nil && !errors.Is(err, context.Canceled) {
			first = err
		}
	}
	return first
}
