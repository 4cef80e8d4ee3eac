package outbox

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runSinkContract runs the behaviour every Sink must have against fresh sinks from newSink.
// newSink returns the sink and a read-back of what its consumer side applied, in order:
// each message once. A sink whose consumer deduplicates (handler, webhook) reads back the
// consumer's deduplicated view; a sink that deduplicates itself (stream) reads back the raw
// target, so the redelivery case checks the sink's own deduplication.
func runSinkContract(t *testing.T, newSink func(t *testing.T) (Sink, func() []Message)) {
	t.Helper()
	ctx := context.Background()

	t.Run("DeliversInOrderOneByOne", func(t *testing.T) {
		sink, readBack := newSink(t)
		msgs := sinkTestMessages(3, 5, 0)
		for _, m := range msgs {
			require.NoError(t, sink.Deliver(ctx, []Message{m}))
		}
		requireSameMessages(t, msgs, readBack())
	})

	t.Run("EmptyBatch", func(t *testing.T) {
		sink, readBack := newSink(t)
		require.NoError(t, sink.Deliver(ctx, nil))
		require.NoError(t, sink.Deliver(ctx, []Message{}))
		require.Empty(t, readBack())
	})

	t.Run("CancelledContext", func(t *testing.T) {
		sink, readBack := newSink(t)
		msgs := sinkTestMessages(2, 3, 0)

		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := sink.Deliver(cctx, msgs)
		require.ErrorIs(t, err, context.Canceled)
		require.NotErrorIs(t, err, ErrPermanent)

		dctx, cancel := context.WithTimeout(ctx, -time.Second)
		defer cancel()
		require.ErrorIs(t, sink.Deliver(dctx, msgs), context.DeadlineExceeded)

		require.Empty(t, readBack(), "nothing is delivered with a done context")

		require.NoError(t, sink.Deliver(ctx, msgs), "a later delivery with a live context succeeds")
		requireSameMessages(t, msgs, readBack())
	})

	t.Run("Batch", func(t *testing.T) {
		sink, readBack := newSink(t)
		msgs := sinkTestMessages(4, 50, 0) // 200 messages, accounts interleaved
		require.NoError(t, sink.Deliver(ctx, msgs))
		requireSameMessages(t, msgs, readBack())
	})

	t.Run("Redelivery", func(t *testing.T) {
		sink, readBack := newSink(t)
		msgs := sinkTestMessages(3, 20, 0)
		first, next := msgs[:40], msgs[40:]
		require.NoError(t, sink.Deliver(ctx, first))
		require.NoError(t, sink.Deliver(ctx, first), "redelivery after success")
		require.NoError(t, sink.Deliver(ctx, first[30:]), "redelivery of a tail")
		// A relay that lost its acks redelivers the tail together with new messages.
		require.NoError(t, sink.Deliver(ctx, append(append([]Message{}, first[35:]...), next...)))
		requireSameMessages(t, msgs, readBack())
	})
}

// sinkTestMessages returns accounts×perAccount messages of keys "acct-<prefix>-<i>",
// interleaved round-robin, each key's sequence numbers ascending from 1. Stream IDs are
// made up and distinct.
func sinkTestMessages(accounts, perAccount, prefix int) []Message {
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	out := make([]Message, 0, accounts*perAccount)
	for v := 1; v <= perAccount; v++ {
		for a := 0; a < accounts; a++ {
			acct := fmt.Sprintf("acct-%d-%d", prefix, a)
			n := len(out)
			m := newTestMessage(acct, int64(v), "transfer.posted", base.Add(time.Duration(n)*time.Millisecond),
				fmt.Sprintf(`{"amount":%d,"currency":"EUR"}`, n+1))
			m.Partition = a % 4
			m.StreamID = fmt.Sprintf("%d-%d", 1700000000000+n, 0)
			out = append(out, m)
		}
	}
	return out
}

// sinkDedupByID returns msgs without repeated IDs, in order of first occurrence.
func sinkDedupByID(msgs []Message) []Message {
	seen := make(map[string]bool, len(msgs))
	var out []Message
	for _, m := range msgs {
		if !seen[m.ID] {
			seen[m.ID] = true
			out = append(out, m)
		}
	}
	return out
}

// requireSameMessages asserts that got equals want element by element in ID, key,
// sequence and type, and that every payload arrived byte for byte as it was sent.
// Partition and StreamID belong to the outbox side and are not compared.
func requireSameMessages(t *testing.T, want, got []Message) {
	t.Helper()
	require.Equal(t, sinkIDs(want), sinkIDs(got), "message IDs in order")
	for i := range want {
		w, g := want[i], got[i]
		require.Equal(t, w.Key, g.Key, "key of %s", w.ID)
		require.Equal(t, w.Seq, g.Seq, "sequence of %s", w.ID)
		require.Equal(t, w.Type, g.Type, "type of %s", w.ID)
		require.Equal(t, string(w.Payload), string(g.Payload), "payload of %s, byte for byte", w.ID)
	}
}

// sinkIDs returns the IDs of msgs.
func sinkIDs(msgs []Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}
