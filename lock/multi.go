package lock

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// DoAll runs fn while holding the leases of every key in keys, and returns fn's error. It
// is Do for a write that touches several keys at once (a transfer, a group commit of several
// accounts); fn's context is cancelled when any of the leases is lost.
//
// The leases are first tried all at once, without waiting (one pipelined round of
// attempts). If any key is busy, the leases taken are given back and DoAll takes the keys
// one after another in sorted order, as nested Do calls: each key is waited for like Do
// (bounded by ctx and Config.WaitTimeout per key) while the leases already taken are
// renewed. Only that ordered wait ever blocks, so two DoAll calls that share keys cannot
// wait for each other in a cycle.
//
// Its results are those of Do, with one addition: when a lease taken first is lost while
// DoAll waits for a later key, fn does not run and the error wraps ErrLeaseLost. An empty
// keys is an error; duplicate keys count once.
func (l *Locker) DoAll(ctx context.Context, keys []string, fn func(ctx context.Context) error) error {
	if fn == nil {
		return errors.New("lock: nil fn")
	}
	if len(keys) == 0 {
		return errors.New("lock: no keys")
	}
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	if len(keys) == 1 {
		return l.Do(ctx, keys[0], fn)
	}
	leases, err := l.tryAll(ctx, keys)
	switch {
	case errors.Is(err, ErrNotAcquired):
		return l.doInOrder(ctx, keys, fn)
	case err != nil:
		return err
	}
	defer func() {
		for _, k := range keys {
			l.queue.leave(k)
		}
	}()
	return l.runAll(ctx, leases, fn)
}

// tryAll tries every key at once without waiting. It returns the leases (holding each
// key's local queue slot) when all were taken; otherwise it gives back those taken and
// returns the first error (ErrNotAcquired, or ctx's). Only a success calls the hooks
// (Acquired for every key): a busy key here is no failure, DoAll then waits for it.
func (l *Locker) tryAll(ctx context.Context, keys []string) ([]*Lease, error) {
	start := l.cfg.Clock()
	leases := make([]*Lease, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() { leases[i], errs[i] = l.obtainHooked(ctx, k, true, true, false) })
	}
	wg.Wait()
	var first error
	for _, err := range errs {
		if err != nil && (first == nil || !errors.Is(err, ErrNotAcquired)) {
			first = err // a context error wins over "busy"
		}
	}
	if first != nil {
		for i, lease := range leases {
			if lease != nil {
				l.releaseQuietly(ctx, lease)
				l.queue.leave(keys[i])
			}
		}
		return nil, first
	}
	if acquired := l.cfg.Hooks.Acquired; acquired != nil {
		wait := l.cfg.Clock().Sub(start)
		for _, k := range keys {
			acquired(k, wait)
		}
	}
	return leases, nil
}

// doInOrder runs fn under the leases of keys, taken one after another in order by nested
// Do calls, so that the leases already held are renewed (and their loss cancels the wait)
// while a later key is waited for.
func (l *Locker) doInOrder(ctx context.Context, keys []string, fn func(ctx context.Context) error) error {
	if len(keys) == 0 {
		return fn(ctx)
	}
	return l.Do(ctx, keys[0], func(ctx context.Context) error {
		return l.doInOrder(ctx, keys[1:], fn)
	})
}
