package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runSinkContract runs the behaviour every Sink must have against fresh sinks from newSink.
// newSink returns the sink and a read-back of what its consumer side applied, in order:
// each event once. A sink whose consumer deduplicates (handler, webhook) reads back the
// consumer's deduplicated view; a sink that deduplicates itself (stream) reads back the raw
// target, so the redelivery case checks the sink's own deduplication.
func runSinkContract(t *testing.T, newSink func(t *testing.T) (Sink, func() []Event)) {
	t.Helper()
	ctx := context.Background()

	t.Run("DeliversInOrderOneByOne", func(t *testing.T) {
		sink, readBack := newSink(t)
		msgs := sinkTestMessages(3, 5, 0)
		for _, m := range msgs {
			require.NoError(t, sink.Deliver(ctx, []Message{m}))
		}
		requireSameEvents(t, sinkTestEvents(msgs), readBack())
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
		requireSameEvents(t, sinkTestEvents(msgs), readBack())
	})

	t.Run("Batch", func(t *testing.T) {
		sink, readBack := newSink(t)
		msgs := sinkTestMessages(4, 50, 0) // 200 messages, accounts interleaved
		require.NoError(t, sink.Deliver(ctx, msgs))
		requireSameEvents(t, sinkTestEvents(msgs), readBack())
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
		requireSameEvents(t, sinkTestEvents(msgs), readBack())
	})
}

// sinkTestMessages returns accounts×perAccount messages of accounts "acct-<prefix>-<i>",
// interleaved round-robin, each account's versions ascending from 1. Stream IDs are
// made up and distinct.
func sinkTestMessages(accounts, perAccount, prefix int) []Message {
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	out := make([]Message, 0, accounts*perAccount)
	for v := 1; v <= perAccount; v++ {
		for a := 0; a < accounts; a++ {
			acct := fmt.Sprintf("acct-%d-%d", prefix, a)
			n := len(out)
			out = append(out, Message{
				Partition: a % 4,
				StreamID:  fmt.Sprintf("%d-%d", 1700000000000+n, 0),
				Event: Event{
					ID:      EventID(acct, int64(v)),
					Type:    "transfer.posted",
					Account: acct,
					Version: int64(v),
					Time:    base.Add(time.Duration(n) * time.Millisecond),
					Data:    json.RawMessage(fmt.Sprintf(`{"amount":%d,"currency":"EUR"}`, n+1)),
				},
			})
		}
	}
	return out
}

// sinkTestEvents returns the events of msgs.
func sinkTestEvents(msgs []Message) []Event {
	out := make([]Event, len(msgs))
	for i := range msgs {
		out[i] = msgs[i].Event
	}
	return out
}

// sinkDedupByID returns events without repeated IDs, in order of first occurrence.
func sinkDedupByID(events []Event) []Event {
	seen := make(map[string]bool, len(events))
	var out []Event
	for _, e := range events {
		if !seen[e.ID] {
			seen[e.ID] = true
			out = append(out, e)
		}
	}
	return out
}

// requireSameEvents asserts that got equals want element by element, comparing times by
// instant and data as JSON.
func requireSameEvents(t *testing.T, want, got []Event) {
	t.Helper()
	require.Equal(t, sinkEventIDs(want), sinkEventIDs(got), "event IDs in order")
	for i := range want {
		w, g := want[i], got[i]
		require.Equal(t, w.Type, g.Type, "type of %s", w.ID)
		require.Equal(t, w.Account, g.Account, "account of %s", w.ID)
		require.Equal(t, w.Version, g.Version, "version of %s", w.ID)
		require.True(t, w.Time.Equal(g.Time), "time of %s: want %s, got %s", w.ID, w.Time, g.Time)
		require.JSONEq(t, string(w.Data), string(g.Data), "data of %s", w.ID)
	}
}

// sinkEventIDs returns the IDs of events.
func sinkEventIDs(events []Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}
