package outbox

import (
	"context"
	"errors"
	"fmt"
)

// HandlerFunc handles one message in-process. It returns nil when the message was applied;
// any error stops the delivery of the rest of the batch. Wrap an error with Permanent when
// retrying the message cannot help. Because delivery is at-least-once, a HandlerFunc must be
// idempotent by Message.ID (see DESIGN §7: dedup mark in the same step as the effect).
type HandlerFunc func(ctx context.Context, m Message) error

// HandlerSink is a Sink that calls a Go function for each message, in the order given, on
// the caller's goroutine. It does not recover panics of the handler.
type HandlerSink struct {
	fn HandlerFunc
}

// NewHandlerSink returns a sink that hands each message to fn, one at a time, in order.
func NewHandlerSink(fn HandlerFunc) *HandlerSink {
	return &HandlerSink{fn: fn}
}

// Deliver calls the handler for each message in order. It checks ctx before every message
// and returns an error wrapping ctx.Err() (nothing further is handled) once ctx is done. It
// stops at the first handler error and returns it wrapped with the failing message's ID, so
// errors.Is/As (including errors.Is(err, ErrPermanent)) see the handler's error. Messages
// before the failing one were handled; the relay redelivers the whole batch. A sink built
// with a nil func returns an error without handling anything.
func (s *HandlerSink) Deliver(ctx context.Context, msgs []Message) error {
	if s.fn == nil {
		return errors.New("outbox: handler sink: no handler func")
	}
	for i := range msgs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("outbox: handler sink: before message %s: %w", msgs[i].ID, err)
		}
		if err := s.fn(ctx, msgs[i]); err != nil {
			return fmt.Errorf("outbox: handler sink: message %s: %w", msgs[i].ID, err)
		}
	}
	return nil
}
