package outbox

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestRelayDelivery is the basic delivery contract, run on standalone Redis, Redis Cluster
// and miniredis: every event reaches a Dedup-backed consumer once, in per-account order;
// status reports the lag before and none after; metrics count the deliveries.
func TestRelayDelivery(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			const partitions = 4
			w := writeWorkload(t, rdb, DefaultPrefix, partitions, accountNames(12), 40)
			c := newOrderConsumer(t, rdb, "basic")
			reg := prometheus.NewRegistry()
			cfg := testConfig(t, partitions, "relay-a", c)
			cfg.Registerer = reg
			r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-a", nil), cfg)
			require.NoError(t, err)

			before, err := r.Status(ctx)
			require.NoError(t, err)
			var lag int64
			for _, st := range before {
				lag += st.Backlog
				require.Empty(t, st.Owner)
			}
			require.Equal(t, int64(w.total), lag, "before the relay runs, every entry is lag")

			startRelay(t, r)
			waitFor(t, 20*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total) },
				"all %d events applied", w.total)
			w.requireExactlyOnceInOrder(t, rdb, c)
			require.Zero(t, c.d.Stats().Duplicates)

			waitFor(t, 5*time.Second, func() bool {
				sts, err := r.Status(ctx)
				require.NoError(t, err)
				for _, st := range sts {
					if st.Backlog != 0 || st.Pending != 0 || st.Owner != "relay-a" || st.OldestAgeSeconds != 0 {
						return false
					}
				}
				return true
			}, "status: owner relay-a, no lag, nothing pending")

			mfs, err := reg.Gather()
			require.NoError(t, err)
			var delivered float64
			for _, mf := range mfs {
				if mf.GetName() == "tally_outbox_delivered_total" {
					for _, m := range mf.GetMetric() {
						delivered += m.GetCounter().GetValue()
					}
				}
			}
			require.Equal(t, float64(w.total), delivered)
		})
	}
}

// TestRelayOrder: 10,000 events of 50 accounts in 16 partitions reach a Dedup-backed
// consumer in per-account version order, each taking effect exactly once.
func TestRelayOrder(t *testing.T) {
	srv := redistest.MustStart(t)
	rdb := newClient(t, srv.Addr())
	const partitions = 16
	w := writeWorkload(t, rdb, DefaultPrefix, partitions, accountNames(50), 200)
	require.Equal(t, 10_000, w.total)

	c := newOrderConsumer(t, rdb, "order")
	var mu sync.Mutex
	last := map[string]int64{}
	var disorder []string
	repeats := 0
	check := funcSink(func(ctx context.Context, msgs []Message) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			// A redelivery (after a lost lease, say) may repeat versions, but the sink
			// must never see a version before all earlier ones.
			if m.Seq > last[m.Key]+1 {
				disorder = append(disorder, fmt.Sprintf("%s after version %d", m.ID, last[m.Key]))
			}
			if m.Seq <= last[m.Key] {
				repeats++
			}
			last[m.Key] = max(last[m.Key], m.Seq)
		}
		return nil
	})
	r, err := NewRelay(rdb, newTestLeaser(rdb, "relay-a", nil), testConfig(t, partitions, "relay-a", check, c))
	require.NoError(t, err)
	start := time.Now()
	startRelay(t, r)
	waitFor(t, 60*time.Second, func() bool { return c.d.Stats().Applied == int64(w.total) }, "10,000 events applied")
	t.Logf("10,000 events delivered in %v", time.Since(start))
	w.requireExactlyOnceInOrder(t, rdb, c)
	require.Zero(t, c.d.Stats().Duplicates+c.d.Stats().Stale)
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, disorder, "the sink saw every account's versions in order, without gaps")
	if repeats > 0 {
		t.Logf("%d redeliveries (a lease was lost or a batch failed; see the log)", repeats)
	}
}

// TestConfigBlockTimeoutFollowsOwnerTTL: an idle owner's blocked read ends well within the
// lease's safety margin (TTL/4) when OwnerTTL is the lease TTL, unless set explicitly.
func TestConfigBlockTimeoutFollowsOwnerTTL(t *testing.T) {
	require.Equal(t, DefaultBlockTimeout, Config{}.withDefaults().BlockTimeout)
	require.Equal(t, 250*time.Millisecond, Config{OwnerTTL: 2 * time.Second}.withDefaults().BlockTimeout)
	require.Equal(t, 3*time.Second, Config{OwnerTTL: 2 * time.Second, BlockTimeout: 3 * time.Second}.withDefaults().BlockTimeout)
}
