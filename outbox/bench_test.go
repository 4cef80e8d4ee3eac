package outbox

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/tally-ledger/tally/internal/redistest"
)

// BenchmarkRelayThroughput measures events/s from pre-filled outbox streams (16 partitions,
// 100 accounts) through one relay to an in-process Dedup-backed consumer whose effect is a
// Redis script (orderEffect), on a real redis-server. Each iteration delivers 20,000 events;
// only the delivery is timed.
func BenchmarkRelayThroughput(b *testing.B) {
	const (
		partitions = 16
		perIter    = 20_000
	)
	srv := redistest.MustStart(b)
	rdb := newClient(b, srv.Addr())
	ctx := context.Background()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		w := writeWorkload(b, rdb, DefaultPrefix, partitions, accountNames(100), perIter/100)
		c := newOrderConsumer(b, rdb, "bench")
		cfg := testConfig(b, partitions, "bench", c)
		cfg.Logger = slog.New(slog.DiscardHandler)
		r, err := NewRelay(rdb, newTestLeaser(rdb, "bench", nil), cfg)
		if err != nil {
			b.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		b.StartTimer()
		start := time.Now()
		go func() { done <- r.Run(runCtx) }()
		deadline := time.Now().Add(2 * time.Minute)
		for c.d.Stats().Applied < int64(w.total) {
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d events applied after 2 minutes", c.d.Stats().Applied, w.total)
			}
			time.Sleep(time.Millisecond)
		}
		total += time.Since(start)
		b.StopTimer()
		cancel()
		<-done
	}
	b.ReportMetric(float64(b.N*perIter)/total.Seconds(), "events/s")
}
