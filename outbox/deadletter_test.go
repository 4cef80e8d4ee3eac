package outbox

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestPoisonEvent: a sink that always fails for one event moves it to the dead letters after
// MaxAttempts tries (at once for a Permanent error) while later events of other accounts
// keep flowing; once the sink is fixed, a replay delivers it, and the Dedup-backed consumer
// applies it exactly once (its version was recorded as a gap).
func TestPoisonEvent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		attempts int64
	}{
		{"transient error", errors.New("poison: consumer rejects it"), 3},
		{"permanent error", Permanent(errors.New("poison: consumer rejects it")), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rdb := newClient(t, redistest.MustStart(t).Addr())
			const partitions = 1
			accounts := []string{"alice", "bob", "carol"}
			w := writeWorkload(t, rdb, DefaultPrefix, partitions, accounts, 30)
			poison := MessageID("alice", 3)

			c := newOrderConsumer(t, rdb, "poison")
			var mu sync.Mutex
			broken := true
			tries := 0
			sink := funcSink(func(ctx context.Context, msgs []Message) error {
				mu.Lock()
				defer mu.Unlock()
				for _, m := range msgs {
					if m.ID == poison && broken {
						if len(msgs) == 1 {
							tries++
						}
						return tc.err
					}
				}
				return nil
			})
			cfg := testConfig(t, partitions, "relay-a", sink, c)
			cfg.MaxAttempts = 3
			cfg.BatchSize = 16
			r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-a", nil), cfg)
			require.NoError(t, err)
			startRelay(t, r)

			waitFor(t, 20*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total-1) },
				"every event but the poison one applied")
			dls, err := r.DeadLetters(ctx, 0, 10)
			require.NoError(t, err)
			require.Len(t, dls, 1)
			require.Equal(t, poison, dls[0].Msg.ID)
			require.Equal(t, dls[0].Origin, dls[0].Msg.StreamID)
			require.Equal(t, tc.attempts, dls[0].Attempts)
			require.Contains(t, dls[0].Reason, "consumer rejects it")
			require.Equal(t, "relay-a", dls[0].Owner)
			require.Equal(t, DefaultGroup, dls[0].Group)
			mu.Lock()
			require.Equal(t, int(tc.attempts), tries, "the poison event was tried alone MaxAttempts times")
			mu.Unlock()
			// Later events of the other accounts (and of alice: the poison event is skipped,
			// see deliver) took effect in order.
			for _, a := range []string{"bob", "carol"} {
				require.Len(t, c.versions(t, rdb, 0, a), 30)
			}
			require.Equal(t, []int64{1, 2, 4, 5}, c.versions(t, rdb, 0, "alice")[:4])
			st, err := r.PartitionStatus(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, int64(1), st.DeadLetters)
			require.Zero(t, st.Backlog)

			mu.Lock()
			broken = false
			mu.Unlock()
			n, err := r.ReplayDeadLetters(ctx)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			waitFor(t, 10*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total) }, "replayed event applied")
			vs := c.versions(t, rdb, 0, "alice")
			require.Len(t, vs, 30)
			require.Equal(t, int64(3), vs[29], "the replayed version took effect last, once")
			require.Zero(t, c.d.Stats().Duplicates+c.d.Stats().Stale)
			waitFor(t, 5*time.Second, func() bool {
				st, err := r.PartitionStatus(ctx, 0)
				require.NoError(t, err)
				return st.DeadLetters == 0 && st.Backlog == 0
			}, "dead letters empty and no lag")
			attempts, err := rdb.HLen(ctx, r.attemptsKey(0)).Result()
			require.NoError(t, err)
			require.Zero(t, attempts, "failure counts are forgotten")
		})
	}
}

// TestMalformedEntryDeadLettered: an entry that is not a valid event is dead-lettered at once
// and does not hold up the partition.
func TestMalformedEntryDeadLettered(t *testing.T) {
	ctx := context.Background()
	rdb := newClient(t, redistest.MustStart(t).Addr())
	require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: StreamKey(DefaultPrefix, 0), Values: []any{"junk", "1"}}).Err())
	w := writeWorkload(t, rdb, DefaultPrefix, 1, []string{"alice"}, 5)
	c := newOrderConsumer(t, rdb, "malformed")
	r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-a", nil), testConfig(t, 1, "relay-a", c))
	require.NoError(t, err)
	startRelay(t, r)
	waitFor(t, 10*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total) }, "events applied")
	dls, err := r.DeadLetters(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Contains(t, dls[0].Reason, "malformed")
	require.Zero(t, dls[0].Attempts)
}
