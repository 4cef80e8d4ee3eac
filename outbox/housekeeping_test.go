package outbox

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestHousekeepingBackends is the housekeeping contract, run on standalone Redis, Redis
// Cluster and miniredis (the embedded default): trimming a missing stream, an empty stream
// with an empty group and a stream whose group has read nothing removes nothing and does
// not fail; status tells a partition no relay has consumed from one that is consumed and
// reports backlog, length and age; dead letters are bounded by DeadLetterMaxLen (the
// drops counted) and replayed; a fully acknowledged stream is trimmed to nothing.
func TestHousekeepingBackends(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			const partitions = 2
			later := func() time.Time { return time.Now().Add(time.Minute) }
			admin, err := NewAdmin(rdb, AdminConfig{Partitions: partitions, Clock: later})
			require.NoError(t, err)
			reject := funcSink(func(context.Context, []Message) error {
				return Permanent(errors.New("rejected"))
			})
			reg := prometheus.NewRegistry()
			cfg := testConfig(t, partitions, "relay-h", reject)
			cfg.Retention = -1
			cfg.DeadLetterMaxLen = 5
			cfg.Registerer = reg
			cfg.Logger = nil // 250 dead letters: keep the test log short
			r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-h", nil), cfg)
			require.NoError(t, err)
			s0, s1 := StreamKey(DefaultPrefix, 0), StreamKey(DefaultPrefix, 1)

			n, err := r.Trim(ctx, 0)
			require.NoError(t, err, "trim of a missing stream")
			require.Zero(t, n)

			require.NoError(t, rdb.XGroupCreateMkStream(ctx, s0, DefaultGroup, "0").Err())
			n, err = r.Trim(ctx, 0)
			require.NoError(t, err, "trim of an empty stream with an empty group")
			require.Zero(t, n)
			st, err := admin.PartitionStatus(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, PartitionStatus{Partition: 0, Consumed: true}, st)

			var ids []string
			for i := 0; i < 3; i++ {
				id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s0, Values: []any{"junk", i}}).Result()
				require.NoError(t, err)
				ids = append(ids, id)
			}
			n, err = r.Trim(ctx, 0)
			require.NoError(t, err, "trim of a stream whose group read nothing")
			require.Zero(t, n, "nothing is acknowledged")
			st, err = admin.PartitionStatus(ctx, 0)
			require.NoError(t, err)
			require.True(t, st.Consumed)
			require.Equal(t, int64(3), st.Backlog)
			require.Equal(t, int64(3), st.Length)
			require.GreaterOrEqual(t, st.OldestAgeSeconds, 59.0, "age of the oldest unacknowledged entry")

			evs := make([]Message, 250)
			for i := range evs {
				evs[i] = testEvent("acct-h", int64(i+1))
			}
			require.Equal(t, 1, partitionOf("acct-h", partitions), "the events go to partition 1")
			xaddEvents(t, rdb, DefaultPrefix, partitions, evs)
			st, err = admin.PartitionStatus(ctx, 1)
			require.NoError(t, err)
			require.False(t, st.Consumed, "no relay has consumed partition 1 yet")
			require.Equal(t, int64(250), st.Backlog)
			require.Equal(t, int64(250), st.Length)
			require.GreaterOrEqual(t, st.OldestAgeSeconds, 59.0)

			stop := startRelay(t, r)
			waitFor(t, 30*time.Second, func() bool {
				sts, err := admin.Status(ctx)
				require.NoError(t, err)
				return sts[0].Backlog == 0 && sts[1].Backlog == 0 && sts[1].Consumed
			}, "every entry dead-lettered (malformed or rejected)")
			stop()
			dropped := counterValue(t, reg, "tally_outbox_dead_letters_dropped_total")
			dead := xlen(t, rdb, DeadLetterKey(DefaultPrefix, 1))
			require.Positive(t, dropped, "the dead-letter stream reached its bound")
			require.Equal(t, int64(250), dead+int64(dropped), "every dead letter is kept or counted as dropped")
			require.Less(t, dead, int64(250))
			require.GreaterOrEqual(t, dead, int64(5))
			require.Equal(t, int64(3), xlen(t, rdb, DeadLetterKey(DefaultPrefix, 0)), "malformed entries are dead letters at once")

			for p, stream := range []string{s0, s1} {
				n, err := r.Trim(ctx, p)
				require.NoError(t, err)
				require.Positive(t, n)
				require.Zero(t, xlen(t, rdb, stream), "a fully acknowledged stream is trimmed to nothing")
			}

			replayed, err := admin.ReplayDeadLetters(ctx)
			require.NoError(t, err)
			require.Equal(t, int(dead+3), replayed)
			sts, err := admin.Status(ctx)
			require.NoError(t, err)
			require.Equal(t, PartitionStatus{Partition: 1, Consumed: true, Length: dead, Backlog: dead,
				OldestAgeSeconds: sts[1].OldestAgeSeconds}, sts[1])
			require.Zero(t, sts[0].DeadLetters)
			require.Equal(t, int64(3), sts[0].Backlog)
			dls, err := admin.DeadLetters(ctx, 1, 10)
			require.NoError(t, err)
			require.Empty(t, dls)
			_, err = admin.DeadLetters(ctx, partitions, 10)
			require.ErrorIs(t, err, ErrUnknownPartition)
		})
	}
}

func xlen(t *testing.T, rdb redis.UniversalClient, key string) int64 {
	t.Helper()
	n, err := rdb.XLen(context.Background(), key).Result()
	require.NoError(t, err)
	return n
}

// counterValue sums the values of a counter family in reg (0 when it is absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return v
}
