package outbox

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// sinkTestRecorder is an in-process consumer that records the messages it handled.
type sinkTestRecorder struct {
	mu   sync.Mutex
	msgs []Message
}

func (r *sinkTestRecorder) handle(_ context.Context, m Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	return nil
}

func (r *sinkTestRecorder) all() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.msgs...)
}

func TestHandlerSinkContract(t *testing.T) {
	t.Parallel()
	runSinkContract(t, func(t *testing.T) (Sink, func() []Message) {
		rec := &sinkTestRecorder{}
		// The consumer deduplicates by message ID, as DESIGN §7 requires of consumers.
		return NewHandlerSink(rec.handle), func() []Message { return sinkDedupByID(rec.all()) }
	})
}

func TestHandlerSink(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	msgs := sinkTestMessages(2, 3, 0)

	t.Run("StopsAtFirstError", func(t *testing.T) {
		errBoom := errors.New("boom")
		var handled []string
		sink := NewHandlerSink(func(_ context.Context, m Message) error {
			handled = append(handled, m.ID)
			if len(handled) == 3 {
				return Permanent(errBoom)
			}
			return nil
		})
		err := sink.Deliver(ctx, msgs)
		require.ErrorIs(t, err, errBoom)
		require.ErrorIs(t, err, ErrPermanent, "Permanent from the handler survives the wrapping")
		require.Contains(t, err.Error(), "outbox: handler sink: message "+msgs[2].ID)
		require.Equal(t, sinkIDs(msgs[:3]), handled, "nothing after the failing message")
	})

	t.Run("ContextCancelledMidBatch", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var handled int
		sink := NewHandlerSink(func(context.Context, Message) error {
			handled++
			if handled == 2 {
				cancel()
			}
			return nil
		})
		err := sink.Deliver(cctx, msgs)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, 2, handled, "no message is handled after ctx is done")
	})

	t.Run("PassesContext", func(t *testing.T) {
		type key struct{}
		vctx := context.WithValue(ctx, key{}, "v")
		sink := NewHandlerSink(func(c context.Context, _ Message) error {
			if c.Value(key{}) != "v" {
				return errors.New("context not passed through")
			}
			return nil
		})
		require.NoError(t, sink.Deliver(vctx, msgs))
	})

	t.Run("NilFunc", func(t *testing.T) {
		err := NewHandlerSink(nil).Deliver(ctx, msgs)
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrPermanent, "a wiring mistake must not dead-letter messages")
	})
}
