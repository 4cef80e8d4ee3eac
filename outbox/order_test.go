package outbox

import (
	"context"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestRelayKeepsKeyOrderWhenAReadWentElsewhere: entries of a partition can land in a
// consumer's pending list without the owner delivering them — the reply of the owner's own
// read lost on a cut connection (go-redis then retries the read, which returns the next
// entries), or a read an earlier owner left blocked in Redis that is served after the
// owner changed. The owner must deliver them before anything newer of the partition, not
// after (the chaos test saw versions of one account out of order both ways).
func TestRelayKeepsKeyOrderWhenAReadWentElsewhere(t *testing.T) {
	for _, reader := range []string{"r1", "earlier-owner"} {
		t.Run(reader, func(t *testing.T) {
			srv := redistest.MustStart(t)
			rdb := newClient(t, srv.Addr())
			ctx := context.Background()

			var (
				mu   sync.Mutex
				seqs []int64
			)
			sink := funcSink(func(_ context.Context, msgs []Message) error {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range msgs {
					seqs = append(seqs, m.Seq)
				}
				return nil
			})
			delivered := func() []int64 {
				mu.Lock()
				defer mu.Unlock()
				return append([]int64(nil), seqs...)
			}
			cfg := testConfig(t, 1, "r1", sink)
			r, err := NewRelay(rdb, newTestLeaser(rdb, "r1", nil), cfg)
			require.NoError(t, err)
			startRelay(t, r)

			xaddEvents(t, rdb, r.cfg.Prefix, 1, []Message{testEvent("a", 1)})
			waitFor(t, 10e9, func() bool { return len(delivered()) == 1 }, "version 1 delivered")

			// Versions 2-4 are appended and read by reader in one transaction, so the relay
			// never reads them itself; then versions 5-6 are appended normally.
			stream := StreamKey(r.cfg.Prefix, 0)
			_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for v := int64(2); v <= 4; v++ {
					p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: EntryFields(testEvent("a", v))})
				}
				p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: r.cfg.Group, Consumer: reader,
					Streams: []string{stream, ">"}, Count: 10, Block: -1})
				return nil
			})
			require.NoError(t, err)
			xaddEvents(t, rdb, r.cfg.Prefix, 1, []Message{testEvent("a", 5), testEvent("a", 6)})

			waitFor(t, 10e9, func() bool { return len(delivered()) >= 6 }, "versions 1-6 delivered (got %v)", delivered())
			require.Equal(t, []int64{1, 2, 3, 4, 5, 6}, delivered(), "in version order, each once")
		})
	}
}
