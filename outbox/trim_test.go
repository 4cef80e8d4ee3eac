package outbox

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// requireUnackedPresent checks that every entry some group has not acknowledged (pending,
// or after its last-delivered ID) is still in the stream.
func requireUnackedPresent(t *testing.T, rdb redis.UniversalClient, stream string, written []string) {
	t.Helper()
	ctx := context.Background()
	present := map[string]bool{}
	xs, err := rdb.XRange(ctx, stream, "-", "+").Result()
	require.NoError(t, err)
	for _, x := range xs {
		present[x.ID] = true
	}
	groups, err := rdb.XInfoGroups(ctx, stream).Result()
	require.NoError(t, err)
	for _, g := range groups {
		pend, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: g.Name, Start: "-", End: "+", Count: 100_000}).Result()
		require.NoError(t, err)
		for _, pe := range pend {
			require.True(t, present[pe.ID], "group %s: pending entry %s was trimmed", g.Name, pe.ID)
		}
		for _, id := range written {
			if streamIDLess(g.LastDeliveredID, id) {
				require.True(t, present[id], "group %s: unread entry %s was trimmed", g.Name, id)
			}
		}
	}
}

// TestTrimUnderSlowConsumer: while a slow relay consumer and a second, slower consumer group
// (some entries read but unacknowledged) work through the stream, trimming with zero
// retention (by the owner every loop and explicitly after each step) never removes an entry
// any group has not acknowledged; every event is still delivered once, and in the end the
// fully acknowledged stream is empty. A retention of an hour keeps acknowledged entries.
func TestTrimUnderSlowConsumer(t *testing.T) {
	ctx := context.Background()
	rdb := newClient(t, redistest.MustStart(t).Addr())
	stream := StreamKey(DefaultPrefix, 0)
	w := writeWorkload(t, rdb, DefaultPrefix, 1, accountNames(4), 50)
	all, err := rdb.XRange(ctx, stream, "-", "+").Result()
	require.NoError(t, err)
	written := make([]string, len(all))
	for i, x := range all {
		written[i] = x.ID
	}
	require.NoError(t, rdb.XGroupCreate(ctx, stream, "audit", "0").Err())

	gate := make(chan struct{}, 1)
	var mu sync.Mutex
	seen := map[string]int{}
	sink := funcSink(func(ctx context.Context, msgs []Message) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			seen[m.ID]++
		}
		return nil
	})
	delivered := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	cfg := testConfig(t, 1, "relay-a", sink)
	cfg.BatchSize = 10
	cfg.Retention = -1
	cfg.TrimInterval = time.Millisecond
	r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-a", nil), cfg)
	require.NoError(t, err)
	startRelay(t, r)

	auditStep := func() {
		_, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "audit", Consumer: "auditor",
			Streams: []string{stream, ">"}, Count: 7, Block: -1}).Result()
		if err != nil {
			require.ErrorIs(t, err, redis.Nil)
		}
		pend, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "audit", Start: "-", End: "+", Count: 5}).Result()
		require.NoError(t, err)
		for _, pe := range pend {
			require.NoError(t, rdb.XAck(ctx, stream, "audit", pe.ID).Err())
		}
	}
	minLen := int64(len(written))
	for delivered() < w.total {
		before := delivered()
		select {
		case gate <- struct{}{}:
		case <-time.After(10 * time.Second):
			t.Fatal("the relay stopped taking batches")
		}
		waitFor(t, 10*time.Second, func() bool { return delivered() > before }, "a batch delivered")
		auditStep()
		_, err := r.Trim(ctx, 0)
		require.NoError(t, err)
		requireUnackedPresent(t, rdb, stream, written)
		n, err := rdb.XLen(ctx, stream).Result()
		require.NoError(t, err)
		minLen = min(minLen, n)
	}
	close(gate)
	require.Less(t, minLen, int64(len(written)), "trimming removed acknowledged entries along the way")
	mu.Lock()
	require.Len(t, seen, w.total)
	for id, n := range seen {
		require.Equal(t, 1, n, "event %s delivered once", id)
	}
	mu.Unlock()

	for {
		sum, err := rdb.XPending(ctx, stream, "audit").Result()
		require.NoError(t, err)
		g, err := rdb.XInfoGroups(ctx, stream).Result()
		require.NoError(t, err)
		done := sum.Count == 0
		for _, gi := range g {
			if gi.Name == "audit" && gi.LastDeliveredID != written[len(written)-1] {
				done = false
			}
		}
		if done {
			break
		}
		auditStep()
	}
	waitFor(t, 5*time.Second, func() bool {
		st, err := r.PartitionStatus(ctx, 0)
		require.NoError(t, err)
		return st.Backlog == 0
	}, "relay group fully acknowledged")

	keep, err := NewRelay(rdb, newTestLeaser(rdb, "relay-k", nil), Config{Partitions: 1, Sinks: []Sink{sink}, Retention: time.Hour})
	require.NoError(t, err)
	n, err := keep.Trim(ctx, 0)
	require.NoError(t, err)
	require.Zero(t, n, "entries younger than the retention are kept")

	_, err = r.Trim(ctx, 0)
	require.NoError(t, err)
	n, err = rdb.XLen(ctx, stream).Result()
	require.NoError(t, err)
	require.Zero(t, n, "once every group acknowledged everything, zero retention trims it all")
}

// TestTrimBackends: the trim script works on standalone Redis, Cluster and miniredis,
// including on a group that has read nothing and on an empty stream.
func TestTrimBackends(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			stream := StreamKey(DefaultPrefix, 3)
			var ids []string
			for i := 0; i < 10; i++ {
				id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"k", i}}).Result()
				require.NoError(t, err)
				ids = append(ids, id)
			}
			r, err := NewRelay(rdb, newTestLeaser(rdb, "x", nil), Config{Partitions: 4, Sinks: []Sink{funcSink(nil)}, Retention: -1})
			require.NoError(t, err)
			n, err := r.Trim(ctx, 3)
			require.NoError(t, err)
			require.Zero(t, n, "no group: nothing is known to be acknowledged")

			require.NoError(t, rdb.XGroupCreate(ctx, stream, DefaultGroup, "0").Err())
			n, err = r.Trim(ctx, 3)
			require.NoError(t, err, "a group that has read nothing (miniredis: last-delivered-id 0)")
			require.Zero(t, n)
			empty := StreamKey(DefaultPrefix, 2)
			require.NoError(t, rdb.XGroupCreateMkStream(ctx, empty, DefaultGroup, "0").Err())
			n, err = r.Trim(ctx, 2)
			require.NoError(t, err, "an empty stream with an empty group")
			require.Zero(t, n)

			_, err = rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "c",
				Streams: []string{stream, ">"}, Count: 8, Block: -1}).Result()
			require.NoError(t, err)
			require.NoError(t, rdb.XAck(ctx, stream, DefaultGroup, ids[0], ids[1], ids[2], ids[4]).Err())
			n, err = r.Trim(ctx, 3)
			require.NoError(t, err)
			require.Equal(t, int64(3), n, "trimmed up to the oldest pending entry")
			first, err := rdb.XRangeN(ctx, stream, "-", "+", 1).Result()
			require.NoError(t, err)
			require.Equal(t, ids[3], first[0].ID)
		})
	}
}
