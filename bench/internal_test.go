package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// TestLatenciesMerge records the same samples into one histogram and, split by
// "worker", into eight that are then merged: the merged quantiles equal the single one's,
// and both are within 0.1% of the exact values.
func TestLatenciesMerge(t *testing.T) {
	one := NewLatencies()
	workers := make([]*Latencies, 8)
	for i := range workers {
		workers[i] = NewLatencies()
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 100_000
	for i := range n {
		d := time.Duration(1+i) * 10 * time.Microsecond // 10µs .. 1s, uniform
		one.Record(d)
		workers[rng.IntN(len(workers))].Record(d)
	}
	merged := NewLatencies()
	for _, w := range workers {
		merged.Merge(w)
	}
	require.Equal(t, int64(n), merged.Count())
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		assert.Equal(t, one.Quantile(q), merged.Quantile(q), "q=%v", q)
		exact := time.Duration(q*n) * 10 * time.Microsecond
		assert.InEpsilon(t, float64(exact), float64(merged.Quantile(q)), 0.001, "q=%v", q)
	}
	assert.InEpsilon(t, float64(time.Second), float64(merged.Max()), 0.001)
	assert.Zero(t, NewLatencies().Quantile(0.99), "no samples")
	assert.Zero(t, NewLatencies().Max())

	clamp := NewLatencies()
	clamp.Record(0)
	clamp.Record(time.Hour)
	assert.Equal(t, time.Microsecond, clamp.Quantile(0))
	assert.InEpsilon(t, float64(latencyMax), float64(clamp.Max()), 0.001, "beyond the range: the top")
}

// TestClassify checks that ledger errors, wrapped as the ledger wraps them, get the HTTP
// API's problem codes (from package handlers' table) and the right outcome, and that
// answers of a running server, lost answers and cancellations are told apart.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		code    string
		status  int
		outcome Outcome
	}{
		{"success", nil, "", 200, Applied},
		{"insufficient funds", fmt.Errorf("%w: 10 USD available, 20 requested", ledger.ErrInsufficientFunds), "insufficient_funds", 422, Rejected},
		{"version conflict", ledger.ErrVersionConflict, "version_conflict", 409, Refused},
		{"lock unavailable", fmt.Errorf("ledger: %w", ledger.ErrLockUnavailable), "lock_unavailable", 503, Refused},
		{"overloaded", ledger.ErrOverloaded, "overloaded", 503, Refused},
		{"store unavailable", fmt.Errorf("%w: %w", ledger.ErrStoreUnavailable, errors.New("dial tcp: refused")), "store_unavailable", 503, Unknown},
		{"not found", ledger.ErrAccountNotFound, "account_not_found", 404, Refused},
		{"hold not pending", ledger.ErrHoldNotPending, "hold_not_pending", 409, Refused},
		{"deadline", context.DeadlineExceeded, "store_unavailable", 503, Unknown},
		{"internal", fmt.Errorf("%w: decode: bad", ledger.ErrInternal), "internal", 500, Unknown},
		{"unmapped", errors.New("something else"), "internal", 500, Unknown},
		{"panic", &ledger.PanicError{Value: "boom"}, "internal", 500, Unknown},
		{"server problem", &ProblemError{Status: 409, Code: "version_conflict"}, "version_conflict", 409, Refused},
		{"server 503", &ProblemError{Status: 503, Code: "store_unavailable"}, "store_unavailable", 503, Unknown},
		{"server 422", &ProblemError{Status: 422, Code: "insufficient_funds"}, "insufficient_funds", 422, Rejected},
		{"no answer", &TransportError{Err: errors.New("connection reset")}, "transport", 0, Unknown},
		{"canceled", fmt.Errorf("wait: %w", context.Canceled), "canceled", 0, Unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Classify(tc.err)
			assert.Equal(t, tc.code, a.Code)
			assert.Equal(t, tc.outcome, a.Outcome)
			if tc.status != 0 {
				assert.Equal(t, tc.status, a.Status)
			}
		})
	}
	// Every ledger sentinel has a code from the API, none of them "internal".
	for _, e := range []error{
		ledger.ErrInvalid, ledger.ErrAccountNotFound, ledger.ErrAccountExists, ledger.ErrVersionConflict,
		ledger.ErrIdempotencyKeyReused, ledger.ErrInsufficientFunds, ledger.ErrOverflow, ledger.ErrLockUnavailable,
		ledger.ErrStoreUnavailable, ledger.ErrOverloaded, ledger.ErrAccountClosed, ledger.ErrAccountNotEmpty,
		ledger.ErrNotFound, ledger.ErrHoldNotPending, ledger.ErrAmountExceedsHold, ledger.ErrBatchNotAtomic,
		ledger.ErrBatchAborted,
	} {
		a := Classify(e)
		assert.NotEqual(t, "internal", a.Code, "%v", e)
		assert.NotZero(t, a.Status, "%v", e)
	}
	assert.Equal(t, http.StatusUnprocessableEntity, Classify(ledger.ErrAmountExceedsHold).Status)
}

// TestParseMix checks the mix syntax and that picks follow the weights.
func TestParseMix(t *testing.T) {
	m, err := ParseMix("deposit=70, withdrawal=10,transfer=15,hold=5")
	require.NoError(t, err)
	assert.Equal(t, "deposit=70,withdrawal=10,transfer=15,hold=5", m.String())
	rng := rand.New(rand.NewPCG(3, 4))
	var counts [numKinds]int
	for range 100_000 {
		counts[m.pick(rng)]++
	}
	for k, w := range m.Weights {
		assert.InDelta(t, float64(w)/100, float64(counts[k])/100_000, 0.01, "%s", Kind(k))
	}
	m, err = ParseMix("transfer=1")
	require.NoError(t, err)
	assert.Equal(t, Transfer, m.pick(rng))
	assert.Equal(t, "", m.without(Transfer).String())
	for _, bad := range []string{"", "deposit", "deposit=-1", "deposit=x", "loan=5", "deposit=1,deposit=2", "deposit=0"} {
		_, err := ParseMix(bad)
		assert.Error(t, err, "%q", bad)
	}
}

// TestReplayMoney checks the HTTP replay's reading of the event types.
func TestReplayMoney(t *testing.T) {
	ev := func(v int64, typ, data string) ledger.Event {
		return ledger.Event{Version: v, Type: typ, Data: []byte(data)}
	}
	a, err := replayMoney("a", []ledger.Event{
		ev(1, ledger.EventAccountOpened, `{"allow_negative":false}`),
		ev(2, ledger.EventDeposited, `{"currency":"USD","amount":100}`),
		ev(3, ledger.EventWithdrawn, `{"currency":"USD","amount":30}`),
		ev(4, ledger.EventHoldPlaced, `{"hold_id":"h","currency":"USD","amount":20}`),
		ev(5, ledger.EventHoldCaptured, `{"hold_id":"h","currency":"USD","amount":20,"captured":15}`),
		ev(6, ledger.EventHoldPlaced, `{"hold_id":"i","currency":"USD","amount":5}`),
		ev(7, ledger.EventTransferDebited, `{"transfer_id":"t","currency":"USD","amount":10}`),
		ev(8, ledger.EventTransferRefunded, `{"transfer_id":"t","currency":"USD","amount":10}`),
		ev(9, ledger.EventTransferCredited, `{"transfer_id":"u","currency":"USD","amount":1}`),
		ev(10, ledger.EventOverdraftLimitSet, `{"overdraft_limit":{"USD":100}}`),
		ev(11, ledger.EventAlertCreated, `{"id":"low","currency":"USD","below":0}`),
		ev(12, ledger.EventBalanceAlert, `{"alert_id":"low","currency":"USD"}`),
		ev(13, ledger.EventAlertDeleted, `{"id":"low"}`),
	})
	require.NoError(t, err)
	assert.Equal(t, int64(13), a.Version)
	assert.Equal(t, ledger.Balance{Posted: 56, Held: 5, Available: 51}, a.Balances["USD"])
	_, err = replayMoney("a", []ledger.Event{ev(2, ledger.EventDeposited, `{}`)})
	assert.Error(t, err, "a gap")
}

// TestSpreadOverReplicas: with several targets, requests go to the replicas in turn; with
// pin (Spread "worker") every request of a worker goes to one replica, worker i to i mod n.
func TestSpreadOverReplicas(t *testing.T) {
	var (
		mu   sync.Mutex
		got  map[string][]int // account (one per worker) → the replicas its requests reached
		urls []string
	)
	for i := range 2 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			account := strings.Split(r.URL.Path, "/")[3] // /v1/accounts/{id}/deposits
			got[account] = append(got[account], i)
			mu.Unlock()
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	for _, pin := range []bool{false, true} {
		got = map[string][]int{}
		d, err := newHTTPDriver(strings.Join(urls, ","), "", 4, 5*time.Second, pin)
		require.NoError(t, err)
		for range 3 {
			for w := range 3 {
				require.Error(t, d.deposit(withWorker(t.Context(), w), fmt.Sprintf("w%d", w), 1))
			}
		}
		d.close()
		if pin {
			assert.Equal(t, map[string][]int{"w0": {0, 0, 0}, "w1": {1, 1, 1}, "w2": {0, 0, 0}}, got)
		} else {
			assert.Equal(t, map[string][]int{"w0": {0, 1, 0}, "w1": {1, 0, 1}, "w2": {0, 1, 0}}, got, "in turn")
		}
	}
}

// TestCPUParsing reads Redis's INFO cpu and a Prometheus page's process CPU, and refuses
// replies without them.
func TestCPUParsing(t *testing.T) {
	d, ok := infoCPU("# CPU\r\nused_cpu_sys:1.325622\r\nused_cpu_user:4.693204\r\nused_cpu_sys_children:0.000000\r\n")
	require.True(t, ok)
	assert.Equal(t, 6018826*time.Microsecond, d)
	_, ok = infoCPU("# CPU\r\nused_cpu_sys:1.5\r\n")
	assert.False(t, ok, "user time missing")
	_, ok = infoCPU("used_cpu_sys:x\r\nused_cpu_user:1\r\n")
	assert.False(t, ok, "not a number")

	page := "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.34\n"
	d, ok = promCPU([]byte(page))
	require.True(t, ok)
	assert.Equal(t, 12340*time.Millisecond, d)
	_, ok = promCPU([]byte("go_goroutines 12\n"))
	assert.False(t, ok)
	rss, ok := promValue([]byte("process_resident_memory_bytes_x 1\nprocess_resident_memory_bytes 4.4736512e+07\n"), "process_resident_memory_bytes")
	require.True(t, ok, "the Prometheus client writes large values in exponent form")
	assert.Equal(t, 44736512.0, rss)
	_, ok = promValue([]byte("process_resident_memory_bytes NaN\n"), "process_resident_memory_bytes")
	assert.False(t, ok)

	a, b := 10*time.Millisecond, 30*time.Millisecond
	got := perOpCPU(cpuSample{client: &a, redis: &b}, cpuSample{client: &b, redis: &a}, 1000)
	require.NotNil(t, got.client)
	assert.InDelta(t, 20.0, *got.client, 1e-9, "20 ms over 1,000 operations")
	assert.Nil(t, got.server, "not sampled")
	assert.Nil(t, got.redis, "went backwards (a restarted Redis): unknown")
	assert.Nil(t, perOpCPU(cpuSample{client: &a}, cpuSample{client: &b}, 0).client, "no operations")
}

// A run's server RSS is the largest any replica reported while the load went on, not the
// last: two replicas behind fake /metrics pages, one of them peaking at its second sample
// and falling back.
func TestServerRSSPeak(t *testing.T) {
	page := func(mib float64) string {
		return fmt.Sprintf("process_cpu_seconds_total 1\nprocess_resident_memory_bytes %g\n", mib*(1<<20))
	}
	var mu sync.Mutex
	asked := 0
	peaking := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		asked++
		mib := 20.0
		switch asked {
		case 1:
			mib = 10
		case 2:
			mib = 90
		}
		fmt.Fprint(w, page(mib))
	}))
	t.Cleanup(peaking.Close)
	steady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page(40))
	}))
	t.Cleanup(steady.Close)

	d, err := newHTTPDriver(peaking.URL+","+steady.URL, "", 2, 5*time.Second, false)
	require.NoError(t, err)
	t.Cleanup(d.close)
	w := watchRSS(t.Context(), d, time.Millisecond)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return asked >= 3
	}, 10*time.Second, time.Millisecond, "sampled while the load runs")
	got := w.stop(t.Context())
	require.NotNil(t, got)
	assert.InDelta(t, 90.0, *got, 1e-9, "the peak of either replica, not the last sample (20 and 40)")

	// A server without process metrics: unknown, not zero.
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "go_goroutines 12\n")
	}))
	t.Cleanup(bare.Close)
	d2, err := newHTTPDriver(bare.URL, "", 1, 5*time.Second, false)
	require.NoError(t, err)
	t.Cleanup(d2.close)
	assert.Nil(t, watchRSS(t.Context(), d2, time.Millisecond).stop(t.Context()))
}

// TestServerLedger reads tally_ledger_info from the replicas' /metrics: a page without it
// is not an error (an older serve), labels it cannot read are, and so are replicas that
// disagree.
func TestServerLedger(t *testing.T) {
	page := func(labels string) string {
		return "# TYPE go_goroutines gauge\ngo_goroutines 12\n# TYPE tally_ledger_info gauge\ntally_ledger_info{" + labels + "} 1\n"
	}
	lock8 := page(`group_commit="false",mode="lock",partitions="8"`)
	for _, tc := range []struct {
		name  string
		pages []string
		want  serverLedger
		found bool
		err   string
	}{
		{"one replica", []string{lock8}, serverLedger{ledger.ModeLock, false, 8}, true, ""},
		{"replicas that agree", []string{lock8, lock8}, serverLedger{ledger.ModeLock, false, 8}, true, ""},
		{"an older serve", []string{"# TYPE go_goroutines gauge\ngo_goroutines 12\n"}, serverLedger{}, false, ""},
		{"one older replica", []string{lock8, "go_goroutines 12\n"}, serverLedger{}, false, ""},
		{"replicas that disagree", []string{lock8, page(`group_commit="true",mode="lock",partitions="8"`)}, serverLedger{}, false,
			"the replicas are configured differently"},
		{"an unknown mode", []string{page(`group_commit="true",mode="pessimistic",partitions="8"`)}, serverLedger{}, false, "tally_ledger_info has labels"},
		{"no partitions", []string{page(`group_commit="true",mode="lock"`)}, serverLedger{}, false, "tally_ledger_info has labels"},
		{"zero partitions", []string{page(`group_commit="true",mode="lock",partitions="0"`)}, serverLedger{}, false, "tally_ledger_info has labels"},
		{"not Prometheus text", []string{"tally_ledger_info{mode=\"lock\" 1\n"}, serverLedger{}, false, "/metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var urls []string
			for _, p := range tc.pages {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					assert.Equal(t, "/metrics", r.URL.Path) // not require: this is the server's goroutine
					_, _ = w.Write([]byte(p))
				}))
				t.Cleanup(srv.Close)
				urls = append(urls, srv.URL)
			}
			d, err := newHTTPDriver(strings.Join(urls, ","), "", 1, 5*time.Second, false)
			require.NoError(t, err)
			defer d.close()
			got, found, err := d.serverLedger(t.Context())
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.found, found)
			assert.Equal(t, tc.want, got)
		})
	}
}
