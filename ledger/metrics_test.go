package ledger_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// gathered is one scrape of a registry: metric family by name.
type gathered map[string]*dto.MetricFamily

func gather(t *testing.T, reg *prometheus.Registry) gathered {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := gathered{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// metric returns the sample of family name whose labels include labels (name=value pairs),
// failing the test when there is none.
func (g gathered) metric(t *testing.T, name string, labels ...string) *dto.Metric {
	t.Helper()
	mf, ok := g[name]
	require.True(t, ok, "metric family %s not exported", name)
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return m
	}
	require.Failf(t, "no sample", "%s%v", name, labels)
	return nil
}

// value returns a counter's or gauge's value.
func (g gathered) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m := g.metric(t, name, labels...)
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// above returns how many observations of histogram name exceeded le.
func (g gathered) above(t *testing.T, name string, le float64) uint64 {
	t.Helper()
	h := g.metric(t, name).GetHistogram()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return h.GetSampleCount() - b.GetCumulativeCount()
		}
	}
	require.Failf(t, "no bucket", "%s has no bucket le=%v", name, le)
	return 0
}

// accountIn returns an account ID of partition p (prefix plus a number).
func accountIn(l *ledger.Ledger, prefix string, p int) string {
	for i := 0; ; i++ {
		if id := fmt.Sprintf("%s%d", prefix, i); l.Partition(id) == p {
			return id
		}
	}
}

// TestMetrics drives a ledger on a real Redis through deposits waiting together, transfers
// within and across partitions (completed by the request, by a later drive, refunded), and
// holds placed, captured, voided and expired by the sweeper, and checks each metric.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	clock := newFakeClock()
	reg := prometheus.NewRegistry()
	l := MustOpen(t, rdb, ledger.Config{Partitions: 4, Clock: clock.Now, Registerer: reg})
	pa := l.Partition("a")
	a, a2 := "a", accountIn(l, "a-", pa) // one partition
	b := accountIn(l, "b-", (pa+1)%4)    // another
	d := accountIn(l, "d-", (pa+2)%4)    // another, closed before a transfer reaches it
	for _, id := range []string{a, a2, b, d} {
		MustOpenAccount(t, l, id, false)
	}
	g := gather(t, reg)
	assert.Equal(t, 4.0, g.value(t, "tally_ledger_events_total", "type", ledger.EventAccountOpened))
	assert.Equal(t, 0.0, g.value(t, "tally_ledger_transfers_total", "state", "created"), "every label exists from the start")

	t.Run("group commit", func(t *testing.T) {
		// The first deposit's commit is held until 20 more deposits wait behind it; the next
		// leader then commits those 20 together, two accounts in one script call. Holding
		// the first commit (rather than waiting in it for 20 to queue) keeps the batch size
		// independent of how fast the goroutines start.
		held, release := holdCommit(t, l, 1)
		before := l.Stats()
		var wg sync.WaitGroup
		deposit := func(id string) {
			wg.Go(func() {
				_, err := l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 100}, ledger.WriteOptions{})
				assert.NoError(t, err)
			})
		}
		defer func() {
			release() // also when a require below failed: no deposit is left blocked
			wg.Wait()
		}()
		deposit(a)
		select {
		case <-held:
		case <-time.After(10 * time.Second):
			require.FailNow(t, "the first deposit never reached its commit")
		}
		for i := 1; i <= 20; i++ {
			id := a
			if i%2 == 1 {
				id = a2
			}
			deposit(id)
		}
		// Waiting counts the requests queued behind the partition's leader (the held
		// deposit); a and a2 share the partition.
		require.Eventually(t, func() bool { return l.Waiting(a) == 20 }, 10*time.Second, time.Millisecond,
			"20 deposits wait behind the held commit")
		release()
		wg.Wait()
		g := gather(t, reg)
		st := l.Stats()
		h := g.metric(t, "tally_ledger_commit_requests").GetHistogram()
		assert.Equal(t, uint64(st.Commits), h.GetSampleCount(), "one observation per commit script call")
		assert.Equal(t, float64(st.Operations), h.GetSampleSum(), "the observations add up to the requests committed")
		assert.GreaterOrEqual(t, g.above(t, "tally_ledger_commit_requests", 16), uint64(1), "20 waiting deposits committed together")
		assert.GreaterOrEqual(t, g.above(t, "tally_ledger_commit_accounts", 1), uint64(1), "two accounts in one commit")
		assert.Equal(t, 21.0, g.value(t, "tally_ledger_events_total", "type", ledger.EventDeposited))
		assert.Equal(t, int64(2), st.Commits-before.Commits, "the held deposit alone, then the 20 behind it in one call")
	})

	t.Run("transfers", func(t *testing.T) {
		_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-same", From: a, To: a2, Currency: "USD", Amount: 1})
		require.NoError(t, err)
		_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-cross", From: a, To: b, Currency: "USD", Amount: 1})
		require.NoError(t, err)
		g := gather(t, reg)
		assert.Equal(t, 2.0, g.value(t, "tally_ledger_transfers_total", "state", "created"))
		assert.Equal(t, 2.0, g.value(t, "tally_ledger_transfers_total", "state", "completed"))

		// Left pending (a crash after the debit), then finished by a retry of the request.
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-late", From: a, To: b, Currency: "USD", Amount: 1}))
		g = gather(t, reg)
		assert.Equal(t, 1.0, g.value(t, "tally_ledger_transfers_pending", "partition", fmt.Sprint(pa)))
		assert.Equal(t, 2.0, g.value(t, "tally_ledger_transfers_total", "state", "completed"), "not completed yet")
		_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-late", From: a, To: b, Currency: "USD", Amount: 1})
		require.NoError(t, err)

		// The destination closes before the credit: refunded.
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-refund", From: a, To: d, Currency: "USD", Amount: 1}))
		_, err = l.CloseAccount(ctx, d, ledger.WriteOptions{})
		require.NoError(t, err)
		tr, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-refund", From: a, To: d, Currency: "USD", Amount: 1})
		require.NoError(t, err)
		require.Equal(t, ledger.TransferRefunded, tr.Transfer.Status)

		g = gather(t, reg)
		assert.Equal(t, 4.0, g.value(t, "tally_ledger_transfers_total", "state", "created"))
		assert.Equal(t, 3.0, g.value(t, "tally_ledger_transfers_total", "state", "completed"), "the replay completed t-late once")
		assert.Equal(t, 1.0, g.value(t, "tally_ledger_transfers_total", "state", "refunded"))
		assert.Equal(t, 0.0, g.value(t, "tally_ledger_transfers_pending", "partition", fmt.Sprint(pa)))
		assert.Equal(t, 1.0, g.value(t, "tally_ledger_status_up"))
	})

	t.Run("holds", func(t *testing.T) {
		place := func(id string, timeout time.Duration) {
			_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: a, ID: id, Currency: "USD", Amount: 5, Timeout: timeout})
			require.NoError(t, err)
		}
		place("h-void", time.Minute)
		place("h-capture", time.Minute)
		place("h-expire", time.Second)
		g := gather(t, reg)
		assert.Equal(t, 3.0, g.value(t, "tally_ledger_holds_total", "state", "placed"))
		assert.Equal(t, 3.0, g.value(t, "tally_ledger_holds_pending", "partition", fmt.Sprint(pa)))
		_, err := l.VoidHold(ctx, a, "h-void", ledger.WriteOptions{})
		require.NoError(t, err)
		_, err = l.CaptureHold(ctx, a, "h-capture", 0, "", ledger.WriteOptions{})
		require.NoError(t, err)

		clock.Advance(2 * time.Second)
		stop := runSweeper(t, l, ledger.SweeperConfig{HoldInterval: 10 * time.Millisecond})
		defer stop()
		require.Eventually(t, func() bool {
			return gather(t, reg).value(t, "tally_ledger_holds_total", "state", "expired") == 1
		}, 10*time.Second, 10*time.Millisecond, "the sweeper's HoldExpired is counted")
		g = gather(t, reg)
		assert.Equal(t, 1.0, g.value(t, "tally_ledger_holds_total", "state", "voided"))
		assert.Equal(t, 1.0, g.value(t, "tally_ledger_holds_total", "state", "captured"))
		assert.Equal(t, 0.0, g.value(t, "tally_ledger_holds_pending", "partition", fmt.Sprint(pa)))
		assert.Equal(t, 1.0, g.value(t, "tally_ledger_events_total", "type", ledger.EventHoldExpired))
	})
}

// TestMetricsCountCommittedOnly runs two ledgers (two processes) on one account: a commit
// of the first is overtaken by a deposit of the second, conflicts and is retried. The
// events both count add up to the deposits made: the conflicting attempt counts nothing.
func TestMetricsCountCommittedOnly(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	regs := []*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry()}
	var ls []*ledger.Ledger
	for _, reg := range regs {
		ls = append(ls, MustOpen(t, rdb, ledger.Config{Partitions: 4, Registerer: reg}))
	}
	MustOpenAccount(t, ls[0], "hot", false)
	var once sync.Once
	ls[0].SetBeforeCommit(func() {
		once.Do(func() {
			_, err := ls[1].Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
			assert.NoError(t, err)
		})
	})
	_, err := ls[0].Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(1), ls[0].Stats().Conflicts, "the first attempt conflicted")
	var deposited float64
	for i, reg := range regs {
		g := gather(t, reg)
		deposited += g.value(t, "tally_ledger_events_total", "type", ledger.EventDeposited)
		h := g.metric(t, "tally_ledger_commit_requests").GetHistogram()
		assert.Equal(t, float64(ls[i].Stats().Operations), h.GetSampleSum())
		assert.Equal(t, uint64(ls[i].Stats().Commits), h.GetSampleCount())
	}
	assert.Equal(t, 2.0, deposited)
	require.Equal(t, int64(2), requireConsistent(t, ls[0], "hot").Balances["USD"].Posted)
}

// TestMetricsRegistration: a Registerer that already holds the ledger's metrics (a second
// ledger on one registry) is an error from New, not a panic.
func TestMetricsRegistration(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	reg := prometheus.NewRegistry()
	_, err := ledger.New(rdb, ledger.Config{Registerer: reg})
	require.NoError(t, err)
	_, err = ledger.New(rdb, ledger.Config{Registerer: reg})
	require.ErrorContains(t, err, "register metrics")
}

// TestLedgerInfo: tally_ledger_info's labels say how the ledger was configured, so that a
// load test labels its results with the server's mode rather than with what it was told.
func TestLedgerInfo(t *testing.T) {
	srv := redistest.MustStart(t)
	rdb := srv.Client()
	for _, tc := range []struct {
		cfg                           ledger.Config
		mode, groupCommit, partitions string
	}{
		{ledger.Config{}, "optimistic", "true", "16"},
		{ledger.Config{Mode: ledger.ModeLock, Locker: mustLocker(t, []*redistest.Server{srv}, lock.Config{}), DisableGroupCommit: true, Partitions: 4}, "lock", "false", "4"},
	} {
		reg := prometheus.NewRegistry()
		tc.cfg.Registerer = reg
		_, err := ledger.New(rdb, tc.cfg)
		require.NoError(t, err)
		info := gather(t, reg).metric(t, "tally_ledger_info")
		labels := map[string]string{}
		for _, lp := range info.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		assert.Equal(t, map[string]string{"mode": tc.mode, "group_commit": tc.groupCommit, "partitions": tc.partitions}, labels)
		assert.Equal(t, 1.0, info.GetGauge().GetValue())
	}
}
