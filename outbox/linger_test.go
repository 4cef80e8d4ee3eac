package outbox

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// batchRecorder is a sink that records each batch's sequence numbers and when it arrived.
type batchRecorder struct {
	mu      sync.Mutex
	batches [][]int64
	at      []time.Time
}

func (b *batchRecorder) Deliver(_ context.Context, msgs []Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seqs := make([]int64, len(msgs))
	for i, m := range msgs {
		seqs[i] = m.Seq
	}
	b.batches = append(b.batches, seqs)
	b.at = append(b.at, time.Now())
	return nil
}

func (b *batchRecorder) delivered() (n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.batches {
		n += len(s)
	}
	return n
}

func (b *batchRecorder) snapshot() ([][]int64, []time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]int64(nil), b.batches...), append([]time.Time(nil), b.at...)
}

// TestBusyPartitionLingers: after a batch smaller than BatchSize the owner pauses Linger
// before it reads again, so the entries written meanwhile go out as one batch instead of
// one read, one delivery and one acknowledgement each; after a full batch it reads at once.
func TestBusyPartitionLingers(t *testing.T) {
	srv := redistest.MustStart(t)
	rdb := newClient(t, srv.Addr())
	const linger = 400 * time.Millisecond

	t.Run("after a short batch", func(t *testing.T) {
		rec := &batchRecorder{}
		cfg := testConfig(t, 1, "r1", rec)
		cfg.Prefix, cfg.Linger = "short", linger
		r, err := NewRelay(rdb, newTestLeaser(rdb, "r1", nil), cfg)
		require.NoError(t, err)
		startRelay(t, r)

		xaddEvents(t, rdb, cfg.Prefix, 1, []Message{testEvent("a", 1)})
		waitFor(t, 10*time.Second, func() bool { return rec.delivered() == 1 }, "version 1 delivered")
		for v := int64(2); v <= 6; v++ { // one round trip each, as separate writes arrive
			xaddEvents(t, rdb, cfg.Prefix, 1, []Message{testEvent("a", v)})
		}
		waitFor(t, 10*time.Second, func() bool { return rec.delivered() == 6 }, "versions 2-6 delivered")
		batches, at := rec.snapshot()
		require.Equal(t, [][]int64{{1}, {2, 3, 4, 5, 6}}, batches, "what arrived while the owner lingered is one batch")
		require.GreaterOrEqual(t, at[1].Sub(at[0]), linger, "the owner paused Linger after the short batch")
	})

	t.Run("after a full batch", func(t *testing.T) {
		rec := &batchRecorder{}
		cfg := testConfig(t, 1, "r1", rec)
		cfg.Prefix, cfg.Linger, cfg.BatchSize = "full", 10*time.Second, 2
		msgs := make([]Message, 5)
		for i := range msgs {
			msgs[i] = testEvent("a", int64(i+1))
		}
		xaddEvents(t, rdb, cfg.Prefix, 1, msgs) // a backlog before the relay starts
		r, err := NewRelay(rdb, newTestLeaser(rdb, "r1", nil), cfg)
		require.NoError(t, err)
		startRelay(t, r)
		// Full batches of 2, 2, then 1: a pause after either full one would take 10s.
		waitFor(t, 5*time.Second, func() bool { return rec.delivered() == 5 }, "the backlog delivered without a pause")
		batches, _ := rec.snapshot()
		require.Equal(t, [][]int64{{1, 2}, {3, 4}, {5}}, batches)
	})
}
