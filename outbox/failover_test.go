package outbox

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestConsumerCrash: the relay (with its consumer) dies after the consumer received a
// batch, once after the effect committed and before the XACK, once before the effect; a
// new relay takes the dead owner's pending entries over and every effect happens once.
func TestConsumerCrash(t *testing.T) {
	for _, tc := range []struct {
		name        string
		effectFirst bool
	}{
		{"between effect and ack", true},
		{"between receive and effect", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rdb := newClient(t, redistest.MustStart(t).Addr())
			const partitions = 2
			w := writeWorkload(t, rdb, DefaultPrefix, partitions, accountNames(6), 20)
			c := newOrderConsumer(t, rdb, "crash")

			var crashed atomic.Bool
			var inFlight atomic.Int64
			crashCtx, crash := context.WithCancel(context.Background())
			defer crash()
			sink1 := funcSink(func(ctx context.Context, msgs []Message) error {
				if crashed.CompareAndSwap(false, true) {
					inFlight.Store(int64(len(msgs)))
					if tc.effectFirst {
						if err := c.Deliver(ctx, msgs); err != nil {
							return err
						}
					}
					crash() // the process dies here: no XACK follows
					<-ctx.Done()
					return ctx.Err()
				}
				if crashed.Load() {
					return context.Canceled
				}
				return c.Deliver(ctx, msgs)
			})
			r1, err := NewRelay(rdb, newTestLeaser(rdb, "relay-1", nil), testConfig(t, partitions, "relay-1", sink1))
			require.NoError(t, err)
			stop1 := startRelay(t, r1)
			<-crashCtx.Done()
			stop1()

			var pending int64
			for p := 0; p < partitions; p++ {
				sum, err := rdb.XPending(ctx, StreamKey(DefaultPrefix, p), DefaultGroup).Result()
				if redis.HasErrorPrefix(err, "NOGROUP") {
					continue // relay-1 died before it served this partition
				}
				require.NoError(t, err)
				t.Logf("partition %d pending %v", p, sum.Consumers)
				pending += sum.Consumers["relay-1"]
			}
			require.GreaterOrEqual(t, pending, inFlight.Load(), "the crashed batch is still pending")
			require.Positive(t, pending)

			r2, err := NewRelay(rdb, newTestLeaser(rdb, "relay-2", nil), testConfig(t, partitions, "relay-2", c))
			require.NoError(t, err)
			startRelay(t, r2)
			waitFor(t, 20*time.Second, func() bool {
				sts, err := r2.Status(ctx)
				require.NoError(t, err)
				for _, st := range sts {
					if st.Backlog != 0 {
						return false
					}
				}
				return true
			}, "every entry delivered and acknowledged")
			w.requireExactlyOnceInOrder(t, rdb, c)
			t.Logf("dedup stats %+v, in flight %d", c.d.Stats(), inFlight.Load())
			if tc.effectFirst {
				require.GreaterOrEqual(t, c.d.Stats().Duplicates, inFlight.Load(), "the redelivered batch was recognised as applied")
			} else {
				require.Zero(t, c.d.Stats().Duplicates)
			}
			for p := 0; p < partitions; p++ {
				consumers, err := rdb.XInfoConsumers(ctx, StreamKey(DefaultPrefix, p), DefaultGroup).Result()
				require.NoError(t, err)
				for _, cons := range consumers {
					require.Equal(t, "relay-2", cons.Name, "the dead owner's consumer was removed once empty")
				}
			}
		})
	}
}

// delivery is one Deliver call as a sink saw it.
type delivery struct {
	owner    string
	p        int
	from, to time.Time
	n        int
}

// TestTwoRelaysOneOwnerPerPartition: two relays started together share the partitions;
// from the recorded lease history, no two leases of one partition ever overlap, every
// delivery happened inside its relay's lease of that partition, and both relays made
// progress. When one stops, the other takes its partitions over.
func TestTwoRelaysOneOwnerPerPartition(t *testing.T) {
	ctx := context.Background()
	rdb := newClient(t, redistest.MustStart(t).Addr())
	const partitions = 16
	hist := &leaseHistory{}
	c := newOrderConsumer(t, rdb, "two")
	var mu sync.Mutex
	var deliveries []delivery
	mk := func(owner string) *Relay {
		sink := funcSink(func(ctx context.Context, msgs []Message) error {
			from := time.Now()
			err := c.Deliver(ctx, msgs)
			mu.Lock()
			deliveries = append(deliveries, delivery{owner: owner, p: msgs[0].Partition, from: from, to: time.Now(), n: len(msgs)})
			mu.Unlock()
			return err
		})
		r, err := NewRelay(rdb, newTestLeaser(rdb, owner, hist), testConfig(t, partitions, owner, sink))
		require.NoError(t, err)
		return r
	}
	ra, rb := mk("relay-a"), mk("relay-b")
	stopA := startRelay(t, ra)
	startRelay(t, rb)

	waitFor(t, 20*time.Second, func() bool {
		sts, err := ra.Status(ctx)
		require.NoError(t, err)
		owners := map[string]int{}
		for _, st := range sts {
			owners[st.Owner]++
		}
		return owners["relay-a"] == partitions/2 && owners["relay-b"] == partitions/2
	}, "the relays split the partitions evenly")

	accounts := accountNames(32)
	w := &workload{partitions: partitions, counts: map[string]int64{}}
	writeRound := func() {
		var evs []Message
		for _, a := range accounts {
			w.counts[a]++
			evs = append(evs, testEvent(a, w.counts[a]))
		}
		xaddEvents(t, rdb, DefaultPrefix, partitions, evs)
		w.total += len(evs)
		waitFor(t, 20*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total) }, "round applied")
	}
	for range 5 {
		writeRound()
	}
	stopA()
	for range 5 {
		writeRound()
	}
	w.requireExactlyOnceInOrder(t, rdb, c)
	sts, err := rb.Status(ctx)
	require.NoError(t, err)
	for _, st := range sts {
		require.Equal(t, "relay-b", st.Owner, "partition %d taken over", st.Partition)
	}

	ivs := hist.snapshot()
	byKey := map[string][]leaseInterval{}
	for _, iv := range ivs {
		byKey[iv.key] = append(byKey[iv.key], iv)
	}
	require.Len(t, byKey, partitions)
	for key, list := range byKey {
		sort.Slice(list, func(i, j int) bool { return list[i].from.Before(list[j].from) })
		for i := 1; i < len(list); i++ {
			prev := list[i-1]
			require.False(t, prev.to.IsZero() && prev.holder != "relay-b", "lease %s of %s never ended", key, prev.holder)
			if !prev.to.IsZero() {
				require.False(t, list[i].from.Before(prev.to),
					"%s: lease of %s from %v overlaps lease of %s ending %v", key, list[i].holder, list[i].from, prev.holder, prev.to)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	perOwner := map[string]int{}
	for _, d := range deliveries {
		perOwner[d.owner] += d.n
		inside := false
		for _, iv := range byKey[ra.leaseKey(d.p)] {
			if iv.holder == d.owner && !d.from.Before(iv.from) && (iv.to.IsZero() || !d.to.After(iv.to)) {
				inside = true
				break
			}
		}
		require.True(t, inside, "delivery by %s to partition %d at %v happened inside its lease", d.owner, d.p, d.from)
	}
	require.Positive(t, perOwner["relay-a"], "relay-a made progress")
	require.Positive(t, perOwner["relay-b"], "relay-b made progress")
	t.Logf("events delivered per relay: %v; leases held: %d", perOwner, len(ivs))
}
