package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/internal/faultproxy"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// The chaos bank test (docs/chaos.md). A topology of real processes — one data Redis behind
// a fault proxy, three Redlock masters, two `tally serve` in lock mode, two `tally relay`
// delivering to a webhook consumer and a Redis stream — takes HTTP traffic from clients
// while a seeded nemesis kills, pauses and cuts things. Every client operation is recorded
// with its invocation and return time and its outcome; at the end, with every fault healed
// and the relays and sweeps caught up, the checks of DESIGN §10 run over Redis and over the
// history, including a porcupine linearizability check of per-account histories.
//
// CHAOS_DURATION (default 30s) sets how long traffic and faults last; CHAOS_SEED replays a
// run's choices (printed in the summary). `make chaos` is the long form.

// chaosConfig sizes one run.
type chaosConfig struct {
	seed     uint64
	duration time.Duration
	mode     string // --concurrency of the serves
	nemesis  bool
	// Bank accounts: bankGroups placement groups ("b3..a1") of bankPerGroup accounts each,
	// funded with funding; bankClients clients do transfers within and across groups,
	// deposits, withdrawals, expiring holds and reads. Some give up on a transfer after one
	// failed attempt, as a crashed client would.
	bankGroups, bankPerGroup, bankClients int
	funding                               int64
	// Linearizable accounts: linGroups groups ("lin1..a0") of linPerGroup accounts that only
	// see deposits, withdrawals, reads, same-partition transfers and holds that do not
	// expire during the run, every one of which takes effect within its call.
	linGroups, linPerGroup, linClients int
	// quiesce bounds the wait for relays and sweeps after the traffic.
	quiesce time.Duration
}

const (
	chaosLockTTL  = 1500 * time.Millisecond // serve's --lock-ttl
	chaosLeaseTTL = 2 * time.Second         // relay's --relay-lease-ttl
	chaosSecret   = "chaos-webhook-secret"
	chaosSink     = "chaos:sink"
	// chaosClientTimeout is one HTTP attempt's deadline: shorter than a pause of a serve,
	// so clients retry elsewhere while the first attempt still waits.
	chaosClientTimeout = 2500 * time.Millisecond
	// chaosOpDeadline bounds one operation's retries; after it the outcome stays unknown.
	chaosOpDeadline = 60 * time.Second
)

func chaosFromEnv(t *testing.T, cfg chaosConfig) chaosConfig {
	t.Helper()
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "CHAOS_DURATION")
		cfg.duration = d
	}
	cfg.seed = uint64(time.Now().UnixNano())
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "CHAOS_SEED")
		cfg.seed = s
	}
	return cfg
}

// TestChaosBank is the fault-injection bank test; it must report no violation.
func TestChaosBank(t *testing.T) {
	cfg := chaosFromEnv(t, chaosConfig{
		duration: 30 * time.Second, mode: "lock", nemesis: true,
		bankGroups: 6, bankPerGroup: 4, bankClients: 12, funding: 10_000,
		linGroups: 2, linPerGroup: 3, linClients: 8,
		quiesce: 2 * time.Minute,
	})
	t.Logf("chaos seed %d (replay: CHAOS_SEED=%d)", cfg.seed, cfg.seed)
	res := runChaos(t, buildTally(t), cfg)
	t.Log("\n" + res.summary())
	require.Positive(t, res.faultTotal(), "the nemesis struck")
	require.Positive(t, res.count("transfer", outOK)+res.count("xtransfer", outOK), "transfers happened")
	require.Empty(t, res.violations, "chaos seed %d: violations", cfg.seed)
}

// TestChaosCatchesBrokenBuild proves the chaos checks can fail: tally built with
// -tags tally_broken_versioncheck commits without the version check (ledger/
// broken_versioncheck.go). Two serves in optimistic mode share hot accounts, so their
// commits race on the same version all the time; the checker must report the lost updates.
// The workload repeats (up to 5 rounds) until it does, so the test fails only if the checks
// are blind, not by bad luck; in practice the first round finds hundreds.
func TestChaosCatchesBrokenBuild(t *testing.T) {
	bin := buildTallyTags(t, "tally_broken_versioncheck")
	cfg := chaosConfig{
		seed: 1, duration: 3 * time.Second, mode: "optimistic",
		bankGroups: 1, bankPerGroup: 2, bankClients: 4, funding: 10_000,
		linGroups: 1, linPerGroup: 2, linClients: 16,
		quiesce: 10 * time.Second,
	}
	var res *chaosResult
	for round := 1; round <= 5; round++ {
		cfg.seed = uint64(round)
		res = runChaos(t, bin, cfg)
		t.Logf("round %d: %d violations", round, len(res.violations))
		if len(res.violations) > 0 {
			break
		}
	}
	t.Log("\n" + res.summary())
	require.NotEmpty(t, res.violations, "the chaos checks must catch a build without the version check")
	kinds := map[string]bool{}
	for _, v := range res.violations {
		kinds[v.kind] = true
	}
	// Each of the two independent checks sees the lost updates on its own: the history
	// check (porcupine) and the ledger's audit of its streams (replay = snapshot).
	require.True(t, kinds["linearizability"], "porcupine must find the lost updates: %v", kinds)
	require.True(t, kinds["verify"], "Verify must find the streams and snapshots disagree: %v", kinds)
}

// TestChaosLinModel: the sequential specification the chaos test checks histories against
// accepts what a correct ledger may answer and refuses lost updates, double captures and
// refusals that the balance does not explain; an operation without an answer may or may
// not have happened.
func TestChaosLinModel(t *testing.T) {
	type step struct {
		call, ret int64
		in        linInput
		out       linOutput
	}
	ok := func(posted, held, version int64) linOutput {
		return linOutput{outcome: outOK, view: &linView{posted, held, version}}
	}
	plain := func(o string) linOutput { return linOutput{outcome: o} }
	dep := linInput{kind: "deposit", amount: 10}
	read := linInput{kind: "read"}
	for _, tc := range []struct {
		name  string
		legal bool
		steps []step
	}{
		{"deposits in turn", true, []step{{0, 1, dep, ok(10, 0, 2)}, {2, 3, dep, ok(20, 0, 3)}}},
		{"lost update", false, []step{{0, 1, dep, ok(10, 0, 2)}, {2, 3, dep, ok(10, 0, 2)}}},
		{"concurrent read sees before or after", true, []step{{0, 5, dep, ok(10, 0, 2)}, {1, 2, read, ok(0, 0, 1)}}},
		{"stale read after the deposit returned", false, []step{{0, 1, dep, ok(10, 0, 2)}, {2, 3, read, ok(0, 0, 1)}}},
		{"unknown deposit applied", true, []step{{0, 100, dep, plain(outUnknown)}, {2, 3, read, ok(10, 0, 2)}}},
		{"unknown deposit not applied", true, []step{{0, 100, dep, plain(outUnknown)}, {2, 3, read, ok(0, 0, 1)}}},
		{"unknown deposit applied twice", false, []step{{0, 100, dep, plain(outUnknown)}, {2, 3, read, ok(20, 0, 3)}}},
		{"refused withdrawal with funds", false, []step{{0, 1, dep, ok(10, 0, 2)}, {2, 3, linInput{kind: "withdrawal", amount: 5}, plain(outRefused)}}},
		{"hold, capture, then not pending", true, []step{
			{0, 1, dep, ok(10, 0, 2)},
			{2, 3, linInput{kind: "hold", amount: 8, hold: "h"}, plain(outOK)},
			{4, 5, linInput{kind: "withdrawal", amount: 5}, plain(outRefused)},
			{6, 7, linInput{kind: "capture", amount: 3, hold: "h"}, plain(outOK)},
			{8, 9, linInput{kind: "void", hold: "h"}, plain(outNotPending)},
			{10, 11, read, ok(7, 0, 4)},
		}},
		{"captured twice", false, []step{
			{0, 1, dep, ok(10, 0, 2)},
			{2, 3, linInput{kind: "hold", amount: 8, hold: "h"}, plain(outOK)},
			{4, 9, linInput{kind: "capture", amount: 3, hold: "h"}, plain(outOK)},
			{4, 9, linInput{kind: "capture", amount: 3, hold: "h"}, plain(outOK)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ops []porcupine.Operation
			for i, s := range tc.steps {
				ops = append(ops, porcupine.Operation{ClientId: i, Input: s.in, Output: s.out, Call: s.call, Return: s.ret})
			}
			require.Equal(t, tc.legal, porcupine.CheckOperations(linModel, ops))
		})
	}
}

// ---------------------------------------------------------------------------------------
// Topology

// chaosEnv is the running topology. Clients read serve addresses through base; the nemesis
// replaces processes under mu.
type chaosEnv struct {
	t       *testing.T
	bin     string
	data    *redistest.Server
	rdb     *redis.Client // direct to the data Redis: the checker's own connection
	proxy   *faultproxy.Proxy
	masters []*redistest.Server

	serveArgs, relayArgs []string

	mu     sync.Mutex
	serves [2]*proc
	relays [2]*proc
	paused map[*proc]bool
	down   map[int]time.Time // lock master index → when to restart it

	consumer *chaosConsumer
}

func startChaosEnv(t *testing.T, bin string, cfg chaosConfig) *chaosEnv {
	t.Helper()
	e := &chaosEnv{t: t, bin: bin, paused: map[*proc]bool{}, down: map[int]time.Time{}}
	e.data = redistest.MustStart(t)
	e.rdb = e.data.Client()
	var err error
	e.proxy, err = faultproxy.New(e.data.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { e.proxy.Close() })
	e.masters = redistest.MustStartN(t, 3)
	e.consumer = newChaosConsumer(t)

	masters := strings.Join(redistest.Addrs(e.masters), ",")
	e.serveArgs = []string{"--redis", e.proxy.Addr(), "--concurrency", cfg.mode,
		"--lock-redis", masters, "--lock-ttl", chaosLockTTL.String(),
		"--relay=false", "--sweep-stuck-after", "2s", "--request-timeout", "10s"}
	e.relayArgs = []string{"--redis", e.proxy.Addr(), "--lock-redis", masters,
		"--relay-lease-ttl", chaosLeaseTTL.String(),
		"--webhook", e.consumer.srv.URL, "--webhook-secret", chaosSecret, "--sink-stream", chaosSink}
	for i := range e.serves {
		e.serves[i] = startProc(t, bin, e.serveArgs...)
	}
	for i := range e.relays {
		e.relays[i], _ = startRelayProc(t, bin, e.relayArgs...)
	}
	return e
}

// base returns the address of serve i%2.
func (e *chaosEnv) base(i int) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.serves[i%2].base
}

// restart replaces a killed serve or relay. A failed start is retried (the proxy may be cut
// just then); it reports an error only when the process never comes up.
func (e *chaosEnv) restart(serve bool, i int) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var p *proc
		if serve {
			p, err = startServeProc(e.t, e.bin, e.serveArgs...)
		} else {
			p, _, err = startRelayProcErr(e.t, e.bin, e.relayArgs...)
		}
		if err == nil {
			e.mu.Lock()
			if serve {
				e.serves[i] = p
			} else {
				e.relays[i] = p
			}
			e.mu.Unlock()
			return nil
		}
	}
	return err
}

// healAll ends every fault: resumes paused processes, restarts lock masters that are down
// and heals the proxy.
func (e *chaosEnv) healAll() {
	e.mu.Lock()
	for p := range e.paused {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
	}
	e.paused = map[*proc]bool{}
	down := e.down
	e.down = map[int]time.Time{}
	e.mu.Unlock()
	for i := range down {
		e.masters[i].Restart()
	}
	e.proxy.Heal()
}

// ---------------------------------------------------------------------------------------
// Nemesis

// Fault kinds, as the summary counts them.
const (
	faultKillServe  = "kill-serve"
	faultKillRelay  = "kill-relay"
	faultPauseServe = "pause-serve"
	faultPauseRelay = "pause-relay"
	faultKillMaster = "kill-lock-master"
	faultCut        = "cut-redis"
	faultSlow       = "slow-redis"
)

var faultKinds = []string{faultKillServe, faultKillRelay, faultPauseServe, faultPauseRelay, faultKillMaster, faultCut, faultSlow}

// nemesis injects one fault after another at random bounded intervals until stop closes,
// then heals everything. A killed lock master stays down across later faults and is
// restarted after the longest lease TTL (Redlock's "delayed restart": it comes back empty,
// and restarting it sooner could grant a second holder a quorum); at most one is down at a
// time, so the masters keep a quorum. A pause lasts past the lease TTL of its process.
func (e *chaosEnv) nemesis(rng *rand.Rand, stop <-chan struct{}, res *chaosResult) {
	start := time.Now()
	faults := res.faults
	defer e.healAll()
	between := func() time.Duration { return time.Duration(100+rng.IntN(900)) * time.Millisecond }
	wait := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for {
			e.restartMasters(false)
			left := time.Until(deadline)
			if left <= 0 {
				return true
			}
			select {
			case <-stop:
				return false
			case <-time.After(min(left, 100*time.Millisecond)):
			}
		}
	}
	// Cuts are drawn twice as often: a cut that lands while a commit script is on the wire
	// leaves its outcome unknown to the serve, the case idempotency has to get right.
	draw := append([]string{faultCut}, faultKinds...)
	for wait(between()) {
		kind := draw[rng.IntN(len(draw))]
		i := rng.IntN(2)
		switch kind {
		case faultKillServe, faultKillRelay:
			serve := kind == faultKillServe
			e.mu.Lock()
			victim := e.relays[i]
			if serve {
				victim = e.serves[i]
			}
			delete(e.paused, victim)
			e.mu.Unlock()
			victim.kill()
			if err := e.restart(serve, i); err != nil {
				e.t.Errorf("nemesis: restart after %s: %v", kind, err)
				return
			}
		case faultPauseServe, faultPauseRelay:
			ttl := chaosLockTTL
			e.mu.Lock()
			victim := e.serves[i]
			if kind == faultPauseRelay {
				victim, ttl = e.relays[i], chaosLeaseTTL
			}
			e.paused[victim] = true
			e.mu.Unlock()
			_ = victim.cmd.Process.Signal(syscall.SIGSTOP)
			ok := wait(ttl + time.Duration(200+rng.IntN(1000))*time.Millisecond)
			e.mu.Lock()
			if e.paused[victim] {
				_ = victim.cmd.Process.Signal(syscall.SIGCONT)
				delete(e.paused, victim)
			}
			e.mu.Unlock()
			if !ok {
				faults[kind]++
				return
			}
		case faultKillMaster:
			e.mu.Lock()
			busy := len(e.down) > 0
			if !busy {
				e.down[i] = time.Now().Add(max(chaosLockTTL, chaosLeaseTTL) + time.Duration(500+rng.IntN(2000))*time.Millisecond)
			}
			e.mu.Unlock()
			if busy {
				continue
			}
			e.masters[i].Kill()
		case faultCut, faultSlow:
			if kind == faultCut {
				e.proxy.Cut()
			} else {
				e.proxy.Slow(time.Duration(10+rng.IntN(140)) * time.Millisecond)
			}
			ok := wait(time.Duration(100+rng.IntN(2900)) * time.Millisecond)
			e.proxy.Heal()
			if !ok {
				faults[kind]++
				return
			}
		}
		faults[kind]++
		res.timeline = append(res.timeline, fmt.Sprintf("%6.1fs %s %d", time.Since(start).Seconds(), kind, i))
	}
}

// restartMasters restarts the lock masters whose delay has passed (all when force).
func (e *chaosEnv) restartMasters(force bool) {
	e.mu.Lock()
	var due []int
	for i, at := range e.down {
		if force || time.Now().After(at) {
			due = append(due, i)
			delete(e.down, i)
		}
	}
	e.mu.Unlock()
	for _, i := range due {
		e.masters[i].Restart()
	}
}

// ---------------------------------------------------------------------------------------
// Webhook consumer

// chaosConsumer is the webhook receiver: it checks signatures, records every delivery,
// applies each event once (dedup by event ID) and notes events applied out of per-account
// version order.
type chaosConsumer struct {
	srv *httptest.Server

	mu         sync.Mutex
	deliveries map[string]int // event ID → deliveries received
	applied    map[string]ledger.Event
	last       map[string]int64 // account → highest version applied
	reordered  []string
	rejected   int       // bad signature or body
	start      time.Time // when the traffic started (for the reorders' times)
}

func newChaosConsumer(t *testing.T) *chaosConsumer {
	c := &chaosConsumer{deliveries: map[string]int{}, applied: map[string]ledger.Event{}, last: map[string]int64{}}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *chaosConsumer) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	payloads, err := outbox.DecodeWebhookBody(body)
	if err != nil || !outbox.VerifySignature([]byte(chaosSecret), body, r.Header.Get(outbox.WebhookSignatureHeader)) {
		c.rejected++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	for _, raw := range payloads {
		var e ledger.Event
		if err := json.Unmarshal(raw, &e); err != nil || e.ID == "" {
			c.rejected++
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		c.deliveries[e.ID]++
		if _, dup := c.applied[e.ID]; dup {
			continue
		}
		c.applied[e.ID] = e
		if e.Version != c.last[e.Account]+1 && len(c.reordered) < 1000 {
			c.reordered = append(c.reordered, fmt.Sprintf("%s after version %d at %.1fs", e.ID, c.last[e.Account], time.Since(c.start).Seconds()))
		}
		c.last[e.Account] = max(c.last[e.Account], e.Version)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (c *chaosConsumer) appliedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.applied)
}

// ---------------------------------------------------------------------------------------
// Clients and the history

// Outcomes of an operation.
const (
	outOK         = "ok"          // 2xx
	outRefused    = "refused"     // 422 insufficient_funds
	outNotPending = "not-pending" // 409 hold_not_pending
	outUnknown    = "unknown"     // no definite answer: the client gave up or ran out of time
	outOther      = "other"       // any other answer: a violation
)

// chaosOp is one client operation of the history.
type chaosOp struct {
	client   int
	kind     string // deposit withdrawal transfer xtransfer hold capture void read
	lin      bool   // part of the linearizability check
	account  string // the account written or read (a transfer's source)
	to       string // a transfer's destination or a capture's
	amount   int64  // amount moved, held or captured (a full capture: the hold's amount)
	id       string // idempotency key, transfer ID or hold ID
	hold     string // capture and void: the hold
	outcome  string
	status   int
	code     string
	body     []byte
	attempts int
	call     time.Time
	ret      time.Time
}

// acctView is an account as the API returns it.
type acctView struct {
	Version  int64 `json:"version"`
	Balances map[string]struct {
		Posted    int64 `json:"posted"`
		Held      int64 `json:"held"`
		Available int64 `json:"available"`
	} `json:"balances"`
}

type chaosHistory struct {
	mu     sync.Mutex
	ops    []*chaosOp
	failed map[string]int // attempts without a definite answer, by what came back
}

func (h *chaosHistory) fail(why string) {
	h.mu.Lock()
	h.failed[why]++
	h.mu.Unlock()
}

func (h *chaosHistory) add(op *chaosOp) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// chaosClient sends operations, retrying each with the same key on another serve until a
// definite answer.
type chaosClient struct {
	id   int
	env  *chaosEnv
	http *http.Client
	hist *chaosHistory
	rng  *rand.Rand
	n    int
}

// apiCall is one attempt of an operation through the typed client of one serve; it returns
// the answer's value (recorded as JSON) or the client's error.
type apiCall func(ctx context.Context, api *client.Client) (any, error)

// do runs one operation and records it: each attempt goes to another serve through a client
// of its own with retries off, so that this loop sees (and counts) every failed attempt.
// giveUp abandons the operation after one failed attempt.
func (c *chaosClient) do(op *chaosOp, giveUp bool, call apiCall) *chaosOp {
	op.client = c.id
	op.call = time.Now()
	deadline := op.call.Add(chaosOpDeadline)
	op.outcome = outUnknown
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		op.attempts++
		api, err := client.New(c.env.base(c.id+attempt), client.WithHTTPClient(c.http),
			client.WithRetry(client.RetryPolicy{MaxAttempts: 1}))
		if err != nil {
			panic(err) // a serve's base URL is always valid
		}
		v, err := call(context.Background(), api)
		var apiErr *client.Error
		var netErr net.Error
		switch {
		case err == nil:
			op.status, op.code = http.StatusOK, ""
			op.body, _ = json.Marshal(v)
		case errors.As(err, &apiErr):
			op.status, op.code, op.body = apiErr.Status, apiErr.Code, []byte(apiErr.Error())
		case errors.As(err, &netErr) && netErr.Timeout():
			c.hist.fail("timeout")
		default:
			c.hist.fail("transport error")
		}
		if op.status != 0 && definite(op.status, op.code) {
			op.outcome = classify(op.status, op.code)
			break
		}
		if op.status != 0 {
			c.hist.fail(fmt.Sprintf("%d %s", op.status, op.code))
			op.status, op.code, op.body = 0, "", nil
		}
		if giveUp {
			break
		}
		// A client's pause before it retries elsewhere (pacing, not a wait for a condition).
		// Not drawn from c.rng: how often an operation is retried depends on timing, and the
		// seed's workload choices should not.
		time.Sleep(backoff.Between(10*time.Millisecond, 50*time.Millisecond))
	}
	op.ret = time.Now()
	c.hist.add(op)
	return op
}

// definite reports whether an answer settles the operation. 5xx, 429 and 409
// version_conflict (optimistic retries exhausted) do not: the same request is sent again.
func definite(status int, code string) bool {
	switch {
	case status == http.StatusTooManyRequests, status >= 502:
		return false
	case status == http.StatusConflict:
		return code != "version_conflict"
	}
	return true
}

func classify(status int, code string) string {
	switch {
	case status >= 200 && status < 300:
		return outOK
	case status == http.StatusUnprocessableEntity && code == "insufficient_funds":
		return outRefused
	case status == http.StatusConflict && code == "hold_not_pending":
		return outNotPending
	}
	return outOther
}

// The operations of the workloads, each an apiCall. Writes carry the operation's key on
// every attempt (a transfer's or hold's ID is its key), so an attempt whose answer was lost
// is replayed, never applied again.

func moneyCall(account string, amount int64, key string) apiCall {
	return func(ctx context.Context, api *client.Client) (any, error) {
		if amount < 0 {
			return api.Withdraw(ctx, account, "USD", -amount, client.WithIdempotencyKey(key))
		}
		return api.Deposit(ctx, account, "USD", amount, client.WithIdempotencyKey(key))
	}
}

func transferCall(op *chaosOp) apiCall {
	req := client.TransferRequest{ID: op.id, From: op.account, To: op.to, Currency: "USD", Amount: op.amount}
	return func(ctx context.Context, api *client.Client) (any, error) { return api.CreateTransfer(ctx, req) }
}

func holdCall(op *chaosOp, timeoutSeconds int64) apiCall {
	req := client.HoldRequest{ID: op.id, Currency: "USD", Amount: op.amount, TimeoutSeconds: timeoutSeconds}
	return func(ctx context.Context, api *client.Client) (any, error) { return api.PlaceHold(ctx, op.account, req) }
}

func voidCall(account, hold, key string) apiCall {
	return func(ctx context.Context, api *client.Client) (any, error) {
		return api.VoidHold(ctx, account, hold, client.WithIdempotencyKey(key))
	}
}

// captureCall captures amount of op's hold (0: all of it), to op.to when set.
func captureCall(op *chaosOp, amount int64) apiCall {
	req := client.CaptureRequest{Amount: amount, To: op.to}
	return func(ctx context.Context, api *client.Client) (any, error) {
		return api.CaptureHold(ctx, op.account, op.hold, req, client.WithIdempotencyKey(op.id))
	}
}

func readCall(account string) apiCall {
	return func(ctx context.Context, api *client.Client) (any, error) { return api.Account(ctx, account) }
}

// keys yields the idempotency key of each of the client's operations until stop closes.
func (c *chaosClient) keys(stop <-chan struct{}) iter.Seq[string] {
	return func(yield func(string) bool) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.n++
			if !yield(fmt.Sprintf("c%d-%d", c.id, c.n)) {
				return
			}
		}
	}
}

// bankWorkload is one bank client's loop.
func (c *chaosClient) bankWorkload(accts [][]string, stop <-chan struct{}) {
	type heldHold struct {
		account, id string
		amount      int64
	}
	var holds []heldHold
	pick := func() (int, string) {
		g := c.rng.IntN(len(accts))
		return g, accts[g][c.rng.IntN(len(accts[g]))]
	}
	for key := range c.keys(stop) {
		g, a := pick()
		amount := int64(1 + c.rng.IntN(400))
		switch r := c.rng.IntN(100); {
		case r < 35:
			kind, b := "transfer", accts[g][c.rng.IntN(len(accts[g]))]
			if c.rng.IntN(2) == 0 {
				kind = "xtransfer"
				_, b = pick()
			}
			if a == b {
				continue
			}
			op := &chaosOp{kind: kind, account: a, to: b, amount: amount, id: "t-" + key}
			c.do(op, c.rng.IntN(5) == 0, transferCall(op))
		case r < 50:
			c.do(&chaosOp{kind: "deposit", account: a, amount: amount, id: key}, false, moneyCall(a, amount, key))
		case r < 65:
			c.do(&chaosOp{kind: "withdrawal", account: a, amount: amount, id: key}, false, moneyCall(a, -amount, key))
		case r < 78:
			// Holds that expire in 1–3 s: many are captured or voided first, the rest expire.
			op := &chaosOp{kind: "hold", account: a, amount: amount, id: "h-" + key}
			c.do(op, false, holdCall(op, int64(1+c.rng.IntN(3))))
			if op.outcome == outOK {
				holds = append(holds, heldHold{a, op.id, amount})
			}
		case r < 90 && len(holds) > 0:
			i := c.rng.IntN(len(holds))
			h := holds[i]
			holds = append(holds[:i], holds[i+1:]...)
			if c.rng.IntN(3) == 0 {
				c.do(&chaosOp{kind: "void", account: h.account, hold: h.id, id: key}, false, voidCall(h.account, h.id, key))
				continue
			}
			op := &chaosOp{kind: "capture", account: h.account, hold: h.id, id: key, amount: 1 + c.rng.Int64N(h.amount)}
			if c.rng.IntN(2) == 0 {
				if _, op.to = pick(); op.to == h.account {
					op.to = ""
				}
			}
			c.do(op, false, captureCall(op, op.amount))
		default:
			c.do(&chaosOp{kind: "read", account: a}, false, readCall(a))
		}
	}
}

// linWorkload is one linearizable client's loop over the accounts of its group. Holds are
// shared by the group's clients, so captures and voids of one hold race.
func (c *chaosClient) linWorkload(accts []string, pool *holdPool, stop <-chan struct{}) {
	for key := range c.keys(stop) {
		a := accts[c.rng.IntN(len(accts))]
		amount := int64(1 + c.rng.IntN(100))
		switch r := c.rng.IntN(100); {
		case r < 20:
			c.do(&chaosOp{kind: "deposit", lin: true, account: a, amount: amount, id: key}, false, moneyCall(a, amount, key))
		case r < 35:
			amount += int64(c.rng.IntN(100))
			c.do(&chaosOp{kind: "withdrawal", lin: true, account: a, amount: amount, id: key}, false, moneyCall(a, -amount, key))
		case r < 55:
			b := accts[c.rng.IntN(len(accts))]
			if a == b {
				continue
			}
			op := &chaosOp{kind: "transfer", lin: true, account: a, to: b, amount: amount, id: "t-" + key}
			c.do(op, false, transferCall(op))
		case r < 65:
			// timeout_seconds far beyond the run: these holds never expire in it.
			op := &chaosOp{kind: "hold", lin: true, account: a, amount: amount, id: "h-" + key}
			c.do(op, false, holdCall(op, 3600))
			if op.outcome == outOK {
				pool.put(linHold{a, op.id, amount})
			}
		case r < 75:
			h, ok := pool.pick(c.rng)
			if !ok {
				continue
			}
			var op *chaosOp
			if c.rng.IntN(3) == 0 {
				op = c.do(&chaosOp{kind: "void", lin: true, account: h.account, hold: h.id, id: key}, false, voidCall(h.account, h.id, key))
			} else {
				op = &chaosOp{kind: "capture", lin: true, account: h.account, hold: h.id, id: key, amount: h.amount}
				var partial int64 // 0: the whole hold
				if c.rng.IntN(2) == 0 {
					op.amount = 1 + c.rng.Int64N(h.amount)
					partial = op.amount
				}
				if b := accts[c.rng.IntN(len(accts))]; b != h.account && c.rng.IntN(2) == 0 {
					op.to = b
				}
				c.do(op, false, captureCall(op, partial))
			}
			if op.outcome == outOK || op.outcome == outNotPending {
				pool.drop(h.id)
			}
		default:
			c.do(&chaosOp{kind: "read", lin: true, account: a}, false, readCall(a))
		}
	}
}

type linHold struct {
	account, id string
	amount      int64
}

// holdPool is the pending holds of a linearizable group, shared by its clients.
type holdPool struct {
	mu    sync.Mutex
	holds []linHold
}

func (p *holdPool) put(h linHold) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holds = append(p.holds, h)
}

func (p *holdPool) pick(rng *rand.Rand) (linHold, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.holds) == 0 {
		return linHold{}, false
	}
	return p.holds[rng.IntN(len(p.holds))], true
}

func (p *holdPool) drop(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, h := range p.holds {
		if h.id == id {
			p.holds = append(p.holds[:i], p.holds[i+1:]...)
			return
		}
	}
}

// ---------------------------------------------------------------------------------------
// The run

// chaosViolation is one broken invariant the checker found.
type chaosViolation struct {
	kind, detail string
}

// chaosResult is what a run did and found.
type chaosResult struct {
	cfg        chaosConfig
	ops        []*chaosOp
	faults     map[string]int
	violations []chaosViolation
	notes      []string // delivery and verify figures for the summary
	timeline   []string // the faults as injected, from the start of the traffic
}

func (r *chaosResult) violate(kind, format string, args ...any) {
	r.violations = append(r.violations, chaosViolation{kind, fmt.Sprintf(format, args...)})
}

func (r *chaosResult) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *chaosResult) count(kind, outcome string) int {
	n := 0
	for _, op := range r.ops {
		if op.kind == kind && op.outcome == outcome {
			n++
		}
	}
	return n
}

func (r *chaosResult) faultTotal() int {
	n := 0
	for _, v := range r.faults {
		n += v
	}
	return n
}

// runChaos starts a topology, runs the workload (and the nemesis) for cfg.duration, heals,
// waits for quiescence and checks. Violations are returned, not failed on, so that the
// broken-build test can require them.
func runChaos(t *testing.T, bin string, cfg chaosConfig) *chaosResult {
	t.Helper()
	ctx := context.Background()
	env := startChaosEnv(t, bin, cfg)
	res := &chaosResult{cfg: cfg, faults: map[string]int{}}
	l, err := ledger.Open(ctx, env.rdb, ledger.Config{})
	require.NoError(t, err)

	// Accounts: opened and funded directly through the API before the history starts.
	bank := make([][]string, cfg.bankGroups)
	var all []string
	for g := range bank {
		for i := 0; i < cfg.bankPerGroup; i++ {
			bank[g] = append(bank[g], fmt.Sprintf("b%d..a%d", g, i))
		}
		all = append(all, bank[g]...)
	}
	lin := make([][]string, cfg.linGroups)
	for g := range lin {
		for i := 0; i < cfg.linPerGroup; i++ {
			lin[g] = append(lin[g], fmt.Sprintf("lin%d..a%d", g, i))
		}
		all = append(all, lin[g]...)
	}
	base := env.base(0)
	for _, a := range all {
		status, body := post(t, base+"/v1/accounts", fmt.Sprintf(`{"id":%q}`, a))
		require.Equal(t, http.StatusCreated, status, body)
	}
	for _, a := range all[:cfg.bankGroups*cfg.bankPerGroup] {
		status, body := post(t, base+"/v1/accounts/"+a+"/deposits", fmt.Sprintf(`{"currency":"USD","amount":%d}`, cfg.funding))
		require.Equal(t, http.StatusCreated, status, body)
	}

	hist := &chaosHistory{failed: map[string]int{}}
	httpc := &http.Client{Timeout: chaosClientTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(httpc.CloseIdleConnections)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pools := make([]*holdPool, len(lin))
	for g := range pools {
		pools[g] = &holdPool{}
	}
	for i := 0; i < cfg.bankClients+cfg.linClients; i++ {
		c := &chaosClient{id: i, env: env, http: httpc, hist: hist, rng: rand.New(rand.NewPCG(cfg.seed, uint64(i)+1))}
		wg.Go(func() {
			if i < cfg.bankClients {
				c.bankWorkload(bank, stop)
			} else {
				g := (i - cfg.bankClients) % len(lin)
				c.linWorkload(lin[g], pools[g], stop)
			}
		})
	}
	nemesisDone := make(chan struct{})
	start := time.Now()
	env.consumer.mu.Lock()
	env.consumer.start = start
	env.consumer.mu.Unlock()
	go func() {
		defer close(nemesisDone)
		if cfg.nemesis {
			env.nemesis(rand.New(rand.NewPCG(cfg.seed, 0)), stop, res)
		}
	}()
	time.Sleep(cfg.duration) // the length of the run itself, not a wait for a condition
	close(stop)
	<-nemesisDone
	env.restartMasters(true)
	wg.Wait()
	res.ops = hist.ops
	res.note("attempts without a definite answer (retried): %v", hist.failed)
	res.note("traffic %v, clients done %v after the stop", cfg.duration, time.Since(start)-cfg.duration)

	quiet := waitQuiescence(t, env, l, res, cfg)
	checkChaos(t, env, l, res, cfg, bank, lin, quiet)
	return res
}

// waitQuiescence waits until nothing is left in flight: every cross-partition transfer
// finished, every outbox entry acknowledged by the relay group, every event applied by the
// webhook consumer, and expired holds swept. Dead letters (deliveries that failed too
// often) are replayed, as an operator would. It returns the last Verify report and
// whether quiescence was reached within cfg.quiesce.
func waitQuiescence(t *testing.T, env *chaosEnv, l *ledger.Ledger, res *chaosResult, cfg chaosConfig) ledger.VerifyReport {
	ctx := context.Background()
	admin, err := outbox.NewAdmin(env.rdb, outbox.AdminConfig{Prefix: "tally", Partitions: l.Partitions()})
	require.NoError(t, err)
	// The expiring holds must have expired (and then been swept) before anything is quiet.
	var lastExpiry time.Time
	for _, op := range res.ops {
		if op.kind == "hold" && !op.lin && op.outcome == outOK {
			var h ledger.Hold
			require.NoError(t, json.Unmarshal(op.body, &h))
			lastExpiry = maxTime(lastExpiry, h.ExpiresAt)
		}
	}
	var rep ledger.VerifyReport
	var why string
	replayed := 0
	start := time.Now()
	deadline := start.Add(cfg.quiesce)
	for {
		// StuckAfter 1ms: any expired hold not swept yet shows as a warning — provided the
		// audit began after the last hold had expired.
		began := time.Now()
		rep, err = l.VerifyWith(ctx, ledger.VerifyOptions{StuckAfter: time.Millisecond})
		require.NoError(t, err)
		why = quiescent(rep, env)
		if why == "" && !began.After(lastExpiry) {
			why = "holds still to expire"
		}
		if why == "" {
			break
		}
		if dead := deadLetters(rep); dead > 0 {
			n, err := admin.ReplayDeadLetters(ctx)
			require.NoError(t, err)
			replayed += n
		}
		if time.Now().After(deadline) {
			res.violate("quiescence", "not reached within %v: %s", cfg.quiesce, why)
			break
		}
		time.Sleep(250 * time.Millisecond) // poll interval of the wait
	}
	res.note("quiescence after %v; dead letters replayed: %d", time.Since(start).Round(100*time.Millisecond), replayed)
	return rep
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func deadLetters(rep ledger.VerifyReport) int64 {
	var n int64
	for _, p := range rep.Outbox {
		n += p.DeadLetters
	}
	return n
}

// quiescent returns why rep does not describe a quiet ledger yet, or "".
func quiescent(rep ledger.VerifyReport, env *chaosEnv) string {
	if rep.Pending > 0 {
		return fmt.Sprintf("%d transfers in flight", rep.Pending)
	}
	for _, p := range rep.Outbox {
		if p.Backlog > 0 || p.Pending > 0 || p.DeadLetters > 0 {
			return fmt.Sprintf("outbox partition %d: backlog %d, pending %d, dead letters %d", p.Partition, p.Backlog, p.Pending, p.DeadLetters)
		}
	}
	if n := env.consumer.appliedCount(); int64(n) < rep.Events {
		return fmt.Sprintf("webhook consumer applied %d of %d events", n, rep.Events)
	}
	for _, w := range rep.Warnings {
		if w.Kind == ledger.ProblemHoldNotSwept {
			return w.String()
		}
	}
	return ""
}

// ---------------------------------------------------------------------------------------
// Checks

// checkChaos runs every check over the quiescent ledger and the history.
func checkChaos(t *testing.T, env *chaosEnv, l *ledger.Ledger, res *chaosResult, cfg chaosConfig, bank, lin [][]string, rep ledger.VerifyReport) {
	ctx := context.Background()
	// §10.1–2 from the ledger's own audit: replay = snapshot, no negative balance,
	// conservation with transfers and holds, transfer flows, hold records, outbox.
	for _, p := range rep.Problems {
		res.violate("verify", "%s", p)
	}
	res.note("verify: %d accounts, %d events, %d transfers, holds %+v, totals %v", rep.Accounts, rep.Events, rep.Transfers, rep.Holds, rep.Totals.Get("USD"))

	var accounts []string
	for _, g := range append(append([][]string{}, bank...), lin...) {
		accounts = append(accounts, g...)
	}
	events := map[string][]ledger.Event{}
	var nEvents int64
	for _, a := range accounts {
		events[a] = readEvents(t, l, a)
		nEvents += int64(len(events[a]))
	}
	if nEvents != rep.Events {
		res.violate("quiescence", "%d events in the streams, %d when the ledger was found quiet: something wrote afterwards", nEvents, rep.Events)
	}

	// §10.1 client side: the posted total is the funding plus what clients were told was
	// deposited, minus what they were told was withdrawn or captured out of the ledger.
	var want, got int64 = int64(cfg.bankGroups*cfg.bankPerGroup) * cfg.funding, 0
	for _, op := range res.ops {
		if op.outcome == outUnknown && op.kind != "transfer" && op.kind != "xtransfer" && op.kind != "read" {
			res.violate("unknown", "%s %s on %s: no definite answer within %v", op.kind, op.id, op.account, chaosOpDeadline)
		}
		if op.outcome == outOther {
			res.violate("answer", "%s %s on %s: %d %s", op.kind, op.id, op.account, op.status, op.body)
		}
		if op.outcome != outOK {
			continue
		}
		switch {
		case op.kind == "deposit":
			want += op.amount
		case op.kind == "withdrawal":
			want -= op.amount
		case op.kind == "capture" && op.to == "":
			want -= op.amount
		}
	}
	for _, a := range accounts {
		acc, err := l.Account(ctx, a)
		require.NoError(t, err)
		b := acc.Balances["USD"]
		got += b.Posted
		if b.Available < 0 {
			res.violate("negative", "%s: available %d", a, b.Available)
		}
	}
	if got != want {
		res.violate("conservation", "posted total %d, clients' acknowledged operations say %d", got, want)
	}
	if v := rep.Totals.Get("USD"); v.Int64() != got || !v.IsInt64() {
		res.violate("conservation", "Verify's total %v, accounts read one by one %d", v, got)
	}

	checkExactlyOnce(res, events, cfg)
	checkDelivery(t, env, res, events, l.Partitions())
	checkLinearizable(res, lin)
}

// readEvents returns every event of an account, bounded so that a corrupt stream (a broken
// build) cannot make it loop.
func readEvents(t *testing.T, l *ledger.Ledger, account string) []ledger.Event {
	var out []ledger.Event
	var after int64
	for page := 0; page < 10_000; page++ {
		evs, next, err := l.Events(context.Background(), account, after, ledger.MaxEventsPage)
		require.NoError(t, err)
		out = append(out, evs...)
		if next <= after {
			break
		}
		after = next
	}
	return out
}

// checkExactlyOnce matches the events in the streams with the history (§10.2, §10.4): every
// acknowledged write is there exactly once, every refused one is not, nothing is there
// that no client asked for, and no hold is resolved twice.
func checkExactlyOnce(res *chaosResult, events map[string][]ledger.Event, cfg chaosConfig) {
	type money struct {
		account string
		amount  int64
	}
	opEvents := map[string]ledger.Event{} // operation ID (= event ID) → Deposited/Withdrawn
	debits := map[string]int{}            // transfer ID → TransferDebited
	placed := map[string]int{}            // account/hold → HoldPlaced
	resolved := map[string][]ledger.Event{}
	for a, evs := range events {
		for _, e := range evs {
			switch e.Type {
			case ledger.EventDeposited, ledger.EventWithdrawn:
				opEvents[e.ID] = e
			case ledger.EventTransferDebited:
				var d ledger.TransferData
				_ = json.Unmarshal(e.Data, &d)
				debits[d.TransferID]++
			case ledger.EventHoldPlaced, ledger.EventHoldCaptured, ledger.EventHoldVoided, ledger.EventHoldExpired:
				var d ledger.HoldData
				_ = json.Unmarshal(e.Data, &d)
				if e.Type == ledger.EventHoldPlaced {
					placed[a+"/"+d.HoldID]++
				} else {
					resolved[a+"/"+d.HoldID] = append(resolved[a+"/"+d.HoldID], e)
				}
			}
		}
	}
	// Funding deposits are version 2 of each bank account.
	claimed := map[string]bool{}
	for g := 0; g < cfg.bankGroups; g++ {
		for i := 0; i < cfg.bankPerGroup; i++ {
			claimed[ledger.EventID(fmt.Sprintf("b%d..a%d", g, i), 2)] = true
		}
	}
	unknownMoney := map[money]int{}
	retried, retriedOK := 0, 0
	for _, op := range res.ops {
		if op.attempts > 1 {
			retried++
		}
		switch op.kind {
		case "deposit", "withdrawal":
			if op.outcome == outUnknown {
				unknownMoney[money{op.account, op.amount}]++
			}
			if op.outcome != outOK {
				continue
			}
			if op.attempts > 1 {
				retriedOK++
			}
			var r struct {
				OperationID string `json:"operation_id"`
			}
			_ = json.Unmarshal(op.body, &r)
			e, ok := opEvents[r.OperationID]
			var d ledger.MoneyData
			_ = json.Unmarshal(e.Data, &d)
			wantType := map[string]string{"deposit": ledger.EventDeposited, "withdrawal": ledger.EventWithdrawn}[op.kind]
			switch {
			case !ok:
				res.violate("exactly-once", "acknowledged %s %s (%s) is not in the stream", op.kind, op.id, r.OperationID)
			case claimed[r.OperationID]:
				res.violate("exactly-once", "event %s acknowledged twice (%s)", r.OperationID, op.id)
			case e.Type != wantType || d.Amount != op.amount:
				res.violate("exactly-once", "%s %s of %d acknowledged as %s, which is %s of %d", op.kind, op.id, op.amount, r.OperationID, e.Type, d.Amount)
			}
			claimed[r.OperationID] = true
		case "transfer", "xtransfer":
			n := debits[op.id]
			switch {
			case op.outcome == outOK && n != 1:
				res.violate("exactly-once", "acknowledged transfer %s debited %d times", op.id, n)
			case op.outcome == outRefused && n != 0:
				res.violate("exactly-once", "refused transfer %s debited %d times", op.id, n)
			case n > 1:
				res.violate("exactly-once", "transfer %s debited %d times", op.id, n)
			}
		case "hold":
			n := placed[op.account+"/"+op.id]
			switch {
			case op.outcome == outOK && n != 1:
				res.violate("exactly-once", "acknowledged hold %s placed %d times", op.id, n)
			case op.outcome == outRefused && n != 0:
				res.violate("exactly-once", "refused hold %s placed %d times", op.id, n)
			case op.outcome == outOK && !op.lin && len(resolved[op.account+"/"+op.id]) != 1:
				res.violate("exactly-once", "expiring hold %s resolved %d times, want once", op.id, len(resolved[op.account+"/"+op.id]))
			}
		case "capture", "void":
			rs := resolved[op.account+"/"+op.hold]
			if op.outcome != outOK {
				continue
			}
			var d ledger.HoldData
			if len(rs) == 1 {
				_ = json.Unmarshal(rs[0].Data, &d)
			}
			switch {
			case len(rs) != 1:
				res.violate("exactly-once", "acknowledged %s of hold %s: resolved %d times", op.kind, op.hold, len(rs))
			case op.kind == "void" && rs[0].Type != ledger.EventHoldVoided,
				op.kind == "capture" && (rs[0].Type != ledger.EventHoldCaptured || d.Captured != op.amount || d.To != op.to):
				res.violate("exactly-once", "acknowledged %s %s of hold %s (amount %d to %q) recorded as %s %+v", op.kind, op.id, op.hold, op.amount, op.to, rs[0].Type, d)
			}
		}
	}
	for id, rs := range resolved {
		if len(rs) > 1 {
			res.violate("exactly-once", "hold %s resolved %d times", id, len(rs))
		}
	}
	// Every deposit and withdrawal in the streams was asked for: an acknowledged one, or at
	// most one per operation whose answer was lost.
	for id, e := range opEvents {
		if claimed[id] {
			continue
		}
		var d ledger.MoneyData
		_ = json.Unmarshal(e.Data, &d)
		if k := (money{e.Account, d.Amount}); unknownMoney[k] > 0 {
			unknownMoney[k]--
			continue
		}
		res.violate("exactly-once", "%s %s of %d in the stream matches no client operation (applied twice?)", e.Type, id, d.Amount)
	}
	res.note("retried operations: %d (%d acknowledged writes retried, each found applied once)", retried, retriedOK)
}

// checkDelivery compares the events in the account streams with the partition outboxes,
// the webhook consumer and the stream sink (§10.3): every event is in an outbox once,
// reached the consumer and was applied by it once, and is in the sink stream once.
func checkDelivery(t *testing.T, env *chaosEnv, res *chaosResult, events map[string][]ledger.Event, partitions int) {
	ctx := context.Background()
	want := map[string]bool{}
	for _, evs := range events {
		for _, e := range evs {
			if want[e.ID] {
				res.violate("delivery", "event ID %s twice in its account stream", e.ID)
			}
			want[e.ID] = true
		}
	}
	compare := func(what string, got map[string]int) {
		missing, extra, twice := 0, 0, 0
		var example []string
		for id := range want {
			if got[id] == 0 {
				missing++
				if len(example) < 3 {
					example = append(example, "missing "+id)
				}
			}
		}
		for id, n := range got {
			if !want[id] {
				extra++
				if len(example) < 3 {
					example = append(example, "extra "+id)
				}
			} else if n > 1 {
				twice++
				if len(example) < 3 {
					example = append(example, fmt.Sprintf("%s %d times", id, n))
				}
			}
		}
		if missing+extra+twice > 0 {
			res.violate("delivery", "%s: %d events missing, %d not in any account stream, %d more than once (%s)", what, missing, extra, twice, strings.Join(example, ", "))
		}
	}
	readStream := func(key string) map[string]int {
		out := map[string]int{}
		for from := "-"; ; {
			entries, err := env.rdb.XRangeN(ctx, key, from, "+", 10_000).Result()
			require.NoError(t, err)
			for _, x := range entries {
				m, err := outbox.DecodeEntry(x.Values)
				if err != nil {
					res.violate("delivery", "%s entry %s: %v", key, x.ID, err)
					continue
				}
				out[m.ID]++
			}
			if len(entries) < 10_000 {
				return out
			}
			from = "(" + entries[len(entries)-1].ID
		}
	}
	outboxIDs := map[string]int{}
	for p := 0; p < partitions; p++ {
		for id, n := range readStream(outbox.StreamKey("tally", p)) {
			outboxIDs[id] += n
		}
	}
	compare("outbox streams", outboxIDs)
	compare("stream sink "+chaosSink, readStream(chaosSink))

	c := env.consumer
	c.mu.Lock()
	defer c.mu.Unlock()
	applied := map[string]int{}
	deliveries := 0
	for id := range c.applied {
		applied[id] = 1
	}
	for _, n := range c.deliveries {
		deliveries += n
	}
	compare("webhook consumer", applied)
	if c.rejected > 0 {
		res.violate("delivery", "webhook consumer rejected %d requests (signature or body)", c.rejected)
	}
	if len(c.reordered) > 0 {
		res.violate("order", "webhook consumer applied %d events out of per-account version order: %s", len(c.reordered), strings.Join(c.reordered[:min(3, len(c.reordered))], "; "))
	}
	res.note("delivery: %d events; webhook %d deliveries (%d redeliveries deduplicated), applied %d; outbox %d entries; sink stream checked",
		len(want), deliveries, deliveries-len(c.applied), len(c.applied), len(outboxIDs))
}

// ---------------------------------------------------------------------------------------
// Linearizability of the lin accounts

// linState is one account as the sequential specification sees it: posted balance,
// version, and the pending holds as "id=amount" sorted and joined by ";" (a string, so the
// state is comparable).
type linState struct {
	posted, version int64
	holds           string
}

func (s linState) holdMap() map[string]int64 {
	m := map[string]int64{}
	if s.holds == "" {
		return m
	}
	for _, kv := range strings.Split(s.holds, ";") {
		id, amt, _ := strings.Cut(kv, "=")
		m[id], _ = strconv.ParseInt(amt, 10, 64)
	}
	return m
}

func (s linState) held() int64 {
	var n int64
	for _, a := range s.holdMap() {
		n += a
	}
	return n
}

func withHolds(s linState, m map[string]int64) linState {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s=%d", id, m[id])
	}
	s.holds = strings.Join(parts, ";")
	return s
}

// linInput is one operation on one account: a transfer is a debit on its source and a
// credit on its destination, a capture to another account a capture and a credit.
type linInput struct {
	kind   string // deposit withdrawal debit credit hold capture void read
	amount int64
	hold   string
}

type linOutput struct {
	outcome string
	view    *linView // deposit, withdrawal, read: the account in the answer
}

// linView is the part of an account in an answer that the model predicts.
type linView struct {
	posted, held, version int64
}

// linEffect returns the state after in, and its outcome: outOK, outRefused or
// outNotPending.
func linEffect(s linState, in linInput) (linState, string) {
	avail := s.posted - s.held()
	switch in.kind {
	case "deposit", "credit":
		s.posted += in.amount
	case "withdrawal", "debit":
		if avail < in.amount {
			return s, outRefused
		}
		s.posted -= in.amount
	case "hold":
		if avail < in.amount {
			return s, outRefused
		}
		m := s.holdMap()
		m[in.hold] = in.amount
		s = withHolds(s, m)
	case "capture", "void":
		m := s.holdMap()
		if _, ok := m[in.hold]; !ok {
			return s, outNotPending
		}
		delete(m, in.hold)
		s = withHolds(s, m)
		if in.kind == "capture" {
			s.posted -= in.amount
		}
	case "read":
		return s, outOK
	}
	s.version++
	return s, outOK
}

var linModel = (&porcupine.NondeterministicModel{
	Init: func() []any { return []any{linState{version: 1}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(linState), input.(linInput), output.(linOutput)
		next, outcome := linEffect(s, in)
		if out.outcome == outUnknown { // took effect, or never did
			if outcome == outOK {
				return []any{s, next}
			}
			return []any{s}
		}
		if outcome != out.outcome {
			return nil
		}
		if out.view != nil && *out.view != (linView{next.posted, next.held(), next.version}) {
			return nil
		}
		return []any{next}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		s := fmt.Sprintf("%s %d %s → %s", in.kind, in.amount, in.hold, out.outcome)
		if out.view != nil {
			s += fmt.Sprintf(" posted %d held %d v%d", out.view.posted, out.view.held, out.view.version)
		}
		return s
	},
	DescribeState: func(state any) string {
		s := state.(linState)
		return fmt.Sprintf("posted %d v%d holds[%s]", s.posted, s.version, s.holds)
	},
}).ToModel()

// checkLinearizable checks each lin account's history against linModel. An operation
// without a definite answer may have taken effect at any time after its call: its return
// is the end of the history.
func checkLinearizable(res *chaosResult, lin [][]string) {
	var origin, end time.Time
	for _, op := range res.ops {
		if origin.IsZero() || op.call.Before(origin) {
			origin = op.call
		}
		if op.ret.After(end) {
			end = op.ret
		}
	}
	per := map[string][]porcupine.Operation{}
	add := func(op *chaosOp, account string, in linInput, out linOutput) {
		ret := op.ret
		if out.outcome == outUnknown {
			ret = end.Add(time.Millisecond)
		}
		per[account] = append(per[account], porcupine.Operation{ClientId: op.client, Input: in, Output: out,
			Call: int64(op.call.Sub(origin)), Return: int64(ret.Sub(origin))})
	}
	for _, op := range res.ops {
		if !op.lin || op.outcome == outOther || (op.kind == "read" && op.outcome != outOK) {
			continue
		}
		out := linOutput{outcome: op.outcome}
		if op.outcome == outOK && (op.kind == "deposit" || op.kind == "withdrawal" || op.kind == "read") {
			var v acctView
			body := op.body
			if op.kind != "read" {
				var r struct {
					Account json.RawMessage `json:"account"`
				}
				_ = json.Unmarshal(op.body, &r)
				body = r.Account
			}
			_ = json.Unmarshal(body, &v)
			b := v.Balances["USD"]
			out.view = &linView{posted: b.Posted, held: b.Held, version: v.Version}
			if b.Available != b.Posted-b.Held {
				res.violate("linearizability", "%s %s: available %d != posted %d - held %d", op.kind, op.account, b.Available, b.Posted, b.Held)
			}
		}
		switch op.kind {
		case "transfer":
			add(op, op.account, linInput{kind: "debit", amount: op.amount}, out)
			if op.outcome == outOK || op.outcome == outUnknown {
				add(op, op.to, linInput{kind: "credit", amount: op.amount}, linOutput{outcome: op.outcome})
			}
		case "capture":
			add(op, op.account, linInput{kind: "capture", amount: op.amount, hold: op.hold}, out)
			if op.to != "" && (op.outcome == outOK || op.outcome == outUnknown) {
				add(op, op.to, linInput{kind: "credit", amount: op.amount}, linOutput{outcome: op.outcome})
			}
		case "hold":
			add(op, op.account, linInput{kind: "hold", amount: op.amount, hold: op.id}, out)
		case "void":
			add(op, op.account, linInput{kind: "void", hold: op.hold}, out)
		default: // deposit, withdrawal, read
			add(op, op.account, linInput{kind: op.kind, amount: op.amount}, out)
		}
	}
	checked := 0
	for _, g := range lin {
		for _, a := range g {
			ops := per[a]
			checked += len(ops)
			result, info := porcupine.CheckOperationsVerbose(linModel, ops, max(time.Minute, res.cfg.duration/2))
			switch result {
			case porcupine.Ok:
			case porcupine.Illegal:
				path := filepath.Join(os.TempDir(), fmt.Sprintf("tally-chaos-%d-%s.html", res.cfg.seed, a))
				_ = porcupine.VisualizePath(linModel, info, path)
				res.violate("linearizability", "account %s: %d operations are not linearizable; see %s", a, len(ops), path)
			default:
				res.violate("linearizability", "account %s: check of %d operations inconclusive (%v)", a, len(ops), result)
			}
		}
	}
	res.note("linearizability: %d accounts, %d per-account operations checked", len(lin)*len(lin[0]), checked)
}

// ---------------------------------------------------------------------------------------
// Summary

// summary is the one-screen report: operations by kind and outcome, faults by kind, the
// checks' figures and the violations.
func (r *chaosResult) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos seed %d: %v of traffic, serves in %s mode, nemesis %v\n", r.cfg.seed, r.cfg.duration, r.cfg.mode, r.cfg.nemesis)
	kinds := []string{"deposit", "withdrawal", "transfer", "xtransfer", "hold", "capture", "void", "read"}
	outcomes := []string{outOK, outRefused, outNotPending, outUnknown, outOther}
	fmt.Fprintf(&b, "%-11s %7s", "operation", "total")
	for _, o := range outcomes {
		fmt.Fprintf(&b, " %11s", o)
	}
	fmt.Fprintf(&b, " %8s\n", "retried")
	total := 0
	for _, k := range kinds {
		n, retried := 0, 0
		by := map[string]int{}
		for _, op := range r.ops {
			if op.kind == k {
				n++
				by[op.outcome]++
				if op.attempts > 1 {
					retried++
				}
			}
		}
		total += n
		fmt.Fprintf(&b, "%-11s %7d", k, n)
		for _, o := range outcomes {
			fmt.Fprintf(&b, " %11d", by[o])
		}
		fmt.Fprintf(&b, " %8d\n", retried)
	}
	fmt.Fprintf(&b, "%-11s %7d   (transfer: same partition, xtransfer: across partitions)\n", "all", total)
	b.WriteString("faults:")
	for _, k := range faultKinds {
		fmt.Fprintf(&b, " %s %d,", k, r.faults[k])
	}
	fmt.Fprintf(&b, " total %d\n", r.faultTotal())
	for _, n := range r.notes {
		b.WriteString(n + "\n")
	}
	if len(r.violations) > 0 {
		b.WriteString("last faults before the end:\n")
		for _, f := range r.timeline[max(0, len(r.timeline)-15):] {
			b.WriteString("  " + f + "\n")
		}
	}
	byKind := map[string]int{}
	for _, v := range r.violations {
		byKind[v.kind]++
	}
	fmt.Fprintf(&b, "violations: %d %v\n", len(r.violations), byKind)
	for i, v := range r.violations {
		if i == 20 {
			fmt.Fprintf(&b, "  ... %d more\n", len(r.violations)-20)
			break
		}
		fmt.Fprintf(&b, "  [%s] %s\n", v.kind, v.detail)
	}
	return b.String()
}
