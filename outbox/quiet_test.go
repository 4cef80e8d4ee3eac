package outbox

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/lock"
)

// bufferLogger returns a logger at level that writes text lines to buf.
func bufferLogger(buf *lockedBuffer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level}))
}

// TestIdleRelaysAreQuiet: three relays with production timings (package lock over the data
// Redis as the single master, as `tally` runs by default) share 16 idle partitions. Once
// they have split them, Redis sees fewer than 250 commands/s in all (about 1,900/s when
// every non-owner retried its leases every few milliseconds and owners polled every
// 50 ms), nothing is logged at warn level, and an entry appended to an idle partition is
// still delivered at once (the owner waits for it inside Redis).
func TestIdleRelaysAreQuiet(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	rdb := newClient(t, srv.Addr())
	const partitions = 16
	var logs lockedBuffer
	got := make(chan Message, 16)
	sink := funcSink(func(ctx context.Context, msgs []Message) error {
		for _, m := range msgs {
			got <- m
		}
		return nil
	})
	var relays []*Relay
	for _, owner := range []string{"relay-a", "relay-b", "relay-c"} {
		l, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{TTL: 10 * time.Second})
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		r, err := NewRelay(rdb, l, Config{Partitions: partitions, Owner: owner, Sinks: []Sink{sink},
			Logger: bufferLogger(&logs, slog.LevelInfo).With("relay", owner)})
		require.NoError(t, err)
		relays = append(relays, r)
		startRelay(t, r)
	}
	waitFor(t, 30*time.Second, func() bool {
		sts, err := relays[0].Status(ctx)
		require.NoError(t, err)
		owners := map[string]int{}
		for _, st := range sts {
			owners[st.Owner]++
		}
		return owners[""] == 0 && len(owners) == 3 && owners["relay-a"] <= 6 && owners["relay-b"] <= 6 && owners["relay-c"] <= 6
	}, "the three relays split the 16 partitions")

	rate := srv.CommandRate(5 * time.Second)
	t.Logf("3 idle relays, 16 partitions: %.0f commands/s", rate)
	require.Less(t, rate, 250.0, "idle relays must not poll Redis hard")
	require.NotContains(t, logs.String(), "level=WARN", "an idle group logs no warnings")
	require.NotContains(t, logs.String(), "level=ERROR")

	start := time.Now()
	xaddEvents(t, rdb, DefaultPrefix, partitions, []Message{testEvent("idle-account", 1)})
	select {
	case m := <-got:
		require.Equal(t, MessageID("idle-account", 1), m.ID)
		t.Logf("first event after the idle spell delivered after %v", time.Since(start))
		require.Less(t, time.Since(start), 500*time.Millisecond, "an idle owner wakes up on a new entry")
	case <-time.After(10 * time.Second):
		t.Fatal("the event was not delivered")
	}
}

// TestLeaseOutageLoggedAtWarn: a relay whose partitions are leased by someone else logs
// that at debug level only; when the lock master goes down, the failed lease attempts are
// an outage, logged at warn level once (not once per partition and attempt).
func TestLeaseOutageLoggedAtWarn(t *testing.T) {
	ctx := context.Background()
	rdb := newClient(t, redistest.MustStart(t).Addr())
	master := redistest.MustStart(t)
	const partitions = 4
	masters := []redis.UniversalClient{redis.NewClient(lock.MasterOptions(master.Addr()))}
	t.Cleanup(func() { masters[0].Close() })

	holder, err := lock.New(masters, lock.Config{TTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { holder.Close() })
	l, err := lock.New(masters, lock.Config{TTL: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	var logs lockedBuffer
	cfg := testConfig(t, partitions, "relay-w", funcSink(func(context.Context, []Message) error { return nil }))
	cfg.Logger = bufferLogger(&logs, slog.LevelDebug)
	r, err := NewRelay(rdb, l, cfg)
	require.NoError(t, err)
	for p := 0; p < partitions; p++ {
		_, err := holder.Acquire(ctx, r.leaseKey(p)) // held by "another relay" without an owner record
		require.NoError(t, err)
	}
	startRelay(t, r)
	waitFor(t, 10*time.Second, func() bool {
		return strings.Count(logs.String(), "partition lease held by another relay") >= 2*partitions
	}, "lease attempts on busy partitions")
	require.NotContains(t, logs.String(), "level=WARN", "a lease held by someone else is not an outage")

	master.Kill()
	waitFor(t, 10*time.Second, func() bool {
		return strings.Count(logs.String(), "lease attempt failed") >= 3*partitions
	}, "lease attempts during the outage")
	warns := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") {
			warns++
			require.Contains(t, line, "lease attempt failed", "the only warning is the outage")
		}
	}
	require.Equal(t, 1, warns, "the outage is logged at warn once while it lasts:\n%s", logs.String())
}

// TestOwnerAdoptsStragglers: entries that another consumer of the group holds pending
// while a relay owns the partition (a former owner's read that reached Redis after it
// lost the lease) are taken over and delivered by the owner, without a change of owner.
func TestOwnerAdoptsStragglers(t *testing.T) {
	ctx := context.Background()
	rdb := newClient(t, redistest.MustStart(t).Addr())
	c := newOrderConsumer(t, rdb, "straggler")
	r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-s", nil), testConfig(t, 1, "relay-s", c))
	require.NoError(t, err)
	startRelay(t, r)
	w := writeWorkload(t, rdb, DefaultPrefix, 1, []string{"alice"}, 2)
	waitFor(t, 10*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total) }, "first events applied")

	// A former owner's late read grabs the next entry while relay-s owns the partition: the
	// append and the read run in one MULTI, so relay-s (blocked in XREADGROUP) cannot get
	// the entry first.
	stream := StreamKey(DefaultPrefix, 0)
	tx := rdb.TxPipeline()
	tx.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: EntryFields(testEvent("alice", 3))})
	read := tx.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "former-owner",
		Streams: []string{stream, ">"}, Count: 1, Block: -1})
	_, err = tx.Exec(ctx)
	require.NoError(t, err)
	require.Len(t, read.Val()[0].Messages, 1, "the former owner holds the entry pending")
	waitFor(t, 10*time.Second, func() bool { return c.d.Stats().Applied == 3 }, "the straggler applied by the owner")
	require.Equal(t, []int64{1, 2, 3}, c.versions(t, rdb, 0, "alice"))
	// The owner acknowledges only after the sink returned, so the effect is visible a round
	// trip before the XACK: wait for it rather than expect it.
	waitFor(t, 10*time.Second, func() bool {
		sum, err := rdb.XPending(ctx, stream, DefaultGroup).Result()
		require.NoError(t, err)
		return sum.Count == 0
	}, "the straggler acknowledged: nothing left pending")
}
