package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math/bits"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// The HTTP scenarios of `tally bench` load a running `tally serve` (--target) over HTTP/1.1
// keep-alive connections, as its clients would, and check the ledger afterwards.
const (
	scenarioTransfers = "transfers" // POST /v1/transfers between two accounts
	scenarioBatch     = "batch"     // POST /v1/batch, atomic=false, deposits
)

// httpBenchFlags are the flags of the HTTP scenarios (the rest comes from benchFlags:
// --accounts, --duration, --partitions, --seed-balance, --redis).
type httpBenchFlags struct {
	target        string
	clients       int
	placement     string
	groupSize     int
	batchSize     int
	apiKey        string
	label         string
	timeout       time.Duration
	settleTimeout time.Duration
}

// registerHTTPBenchFlags adds the HTTP scenarios' flags to fs.
func registerHTTPBenchFlags(fs *flag.FlagSet) *httpBenchFlags {
	h := &httpBenchFlags{}
	fs.StringVar(&h.target, "target", "", "base URL of a running tally serve to load over HTTP, e.g. http://127.0.0.1:8080 (--redis is then optional: given, it must be the server's data Redis; bench measures its ceiling and runs tally verify on it)")
	fs.IntVar(&h.clients, "clients", 64, "transfers, batch: concurrent HTTP clients, each with its own keep-alive connection")
	fs.StringVar(&h.placement, "placement", "same,cross", "transfers: comma-separated placements: same (both accounts share a placement tag: one script) | cross (different partitions: the saga)")
	fs.IntVar(&h.groupSize, "group-size", 10, "transfers, placement same: accounts per placement tag")
	fs.IntVar(&h.batchSize, "batch-size", 100, "batch: deposits per request (1..1000)")
	fs.StringVar(&h.apiKey, "api-key", "", "transfers, batch: API key sent as Authorization: Bearer")
	fs.StringVar(&h.label, "label", "", "transfers, batch: text for the table's label column (e.g. the server's --concurrency)")
	fs.DurationVar(&h.timeout, "http-timeout", 60*time.Second, "transfers, batch: deadline of one HTTP request")
	fs.DurationVar(&h.settleTimeout, "settle-timeout", 30*time.Second, "transfers: longest wait for 202 (pending) transfers to finish before the check")
	return h
}

// handles reports whether scenario is one of the HTTP scenarios.
func (h *httpBenchFlags) handles(scenario string) bool {
	return scenario == scenarioTransfers || scenario == scenarioBatch
}

func (h *httpBenchFlags) validate(scenario string) error {
	u, err := url.Parse(h.target)
	switch {
	case h.target == "":
		return fmt.Errorf("--scenario %s needs --target (the base URL of a running tally serve)", scenario)
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("--target must be an http(s) base URL, got %q", h.target)
	case h.clients < 1:
		return errors.New("--clients must be positive")
	case h.groupSize < 2:
		return errors.New("--group-size must be at least 2")
	case h.batchSize < 1 || h.batchSize > ledger.MaxBatchOps:
		return fmt.Errorf("--batch-size must be 1..%d", ledger.MaxBatchOps)
	case h.timeout <= 0 || h.settleTimeout <= 0:
		return errors.New("--http-timeout and --settle-timeout must be positive")
	}
	for _, p := range splitList(h.placement) {
		if p != "same" && p != "cross" {
			return fmt.Errorf("--placement: %q is neither same nor cross", p)
		}
	}
	if len(splitList(h.placement)) == 0 {
		return errors.New("--placement names no placement")
	}
	return nil
}

// runHTTPBench runs the transfers or batch scenario against --target, one table row per
// account count (× placement), and checks every row's accounts afterwards: over HTTP
// against what the clients were told, and with --redis also with ledger.Verify. It returns
// an error for invalid flags, a failed setup or a failed check; individual requests that
// fail are counted in the table.
func runHTTPBench(ctx context.Context, f *benchFlags, h *httpBenchFlags, stdout, stderr io.Writer) error {
	if err := h.validate(f.scenario); err != nil {
		return err
	}
	if f.duration <= 0 || f.seed <= 0 || f.partitions < 1 {
		return errors.New("--duration, --seed-balance and --partitions must be positive")
	}
	counts, err := parseCounts(f.accounts, "10000")
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	hb := &httpBench{f: f, h: h, stdout: stdout, stderr: stderr, runID: newRunID(),
		base: strings.TrimRight(h.target, "/")}
	if f.redis.addr != "" || f.redis.cluster != "" {
		rdb, closeRedis, err := f.redis.connect(ctx, log, false)
		if err != nil {
			return err
		}
		defer closeRedis()
		// The prefix serve uses; Open fails on a partition count other than the server's.
		if hb.ledger, err = ledger.Open(ctx, rdb, ledger.Config{Prefix: "tally", Partitions: f.partitions}); err != nil {
			return err
		}
		// INFO commandstats of the data Redis and of the --lock-redis masters, if given.
		hb.counter = &relayBench{rdb: rdb}
		for _, a := range splitList(f.lock.masters) {
			m := redis.NewClient(lock.MasterOptions(a))
			defer m.Close()
			hb.counter.masters = append(hb.counter.masters, m)
		}
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * h.clients,
		MaxIdleConnsPerHost: 2 * h.clients,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	hb.client = &http.Client{Transport: tr, Timeout: h.timeout}

	placements := []string{""}
	if f.scenario == scenarioTransfers {
		placements = splitList(h.placement)
	}
	fmt.Fprintf(stdout, "Target %s, %d clients, %s per row, %d partitions, seed balance %d; GOMAXPROCS %d, %s.\n\n",
		hb.base, h.clients, f.duration, f.partitions, f.seed, runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintln(stdout, "| label | scenario | accounts | ops | ops/s | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | Redis cmds/op data / lock | HTTP statuses | operation statuses | check |")
	fmt.Fprintln(stdout, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
	var failed []string
	for _, n := range counts {
		for _, p := range placements {
			r, err := hb.runRow(ctx, n, p)
			if err != nil {
				return err
			}
			if r.check != nil {
				failed = append(failed, fmt.Sprintf("- %s, %d accounts: %v", r.name, n, r.check))
			}
		}
	}
	fmt.Fprint(stdout, "\nops counts operations the server applied (transfers answered 201 completed or 202 pending; "+
		"batch: deposits answered 201 inside the batch), per second of the run; requests/s counts HTTP requests. "+
		"Latencies are per HTTP request (a whole batch for the batch scenario), over every request that got an answer, "+
		"from a log-linear histogram (≤ 1.6% above the true value). Redis cmds/op: commands the data Redis and the --lock-redis masters "+
		"executed during the load (INFO commandstats, including those scripts run, and the server's relay) per op; \"-\" without --redis or --lock-redis.\n")
	if len(failed) > 0 {
		fmt.Fprintf(stdout, "\nCheck failures:\n%s\n", strings.Join(failed, "\n"))
		return fmt.Errorf("bench: %d of the rows failed their correctness check", len(failed))
	}
	return ctx.Err()
}

// httpBench holds what every row of one run shares.
type httpBench struct {
	f              *benchFlags
	h              *httpBenchFlags
	stdout, stderr io.Writer
	runID          string
	base           string
	client         *http.Client
	ledger         *ledger.Ledger // nil without --redis
	counter        *relayBench    // counts Redis commands; nil without --redis
	rows           int
}

func (hb *httpBench) progress(format string, args ...any) {
	fmt.Fprintf(hb.stderr, "bench: "+format+"\n", args...)
}

// rowResult is the outcome of one row.
type rowResult struct {
	name  string
	check error // nil when the correctness check passed
}

// benchAccounts are the accounts of one row with what the clients know about them: every
// answer that applied something adds its amount and event count here.
type benchAccounts struct {
	ids       []string
	partition []int
	groups    int // placement same: account i has tag i % groups
	delta     []atomic.Int64
	events    []atomic.Int64
}

func newBenchAccounts(ids []string, partitions int) *benchAccounts {
	a := &benchAccounts{ids: ids, partition: make([]int, len(ids)),
		delta: make([]atomic.Int64, len(ids)), events: make([]atomic.Int64, len(ids))}
	for i, id := range ids {
		a.partition[i] = placementPartition(id, partitions)
	}
	return a
}

// placementPartition is the partition of an account ID as docs/transfers.md specifies it:
// FNV-1a (32 bit) of the placement tag (the part before the first "..") or of the whole
// ID, modulo the partition count. With --redis the bench checks it against
// ledger.(*Ledger).Partition.
func placementPartition(id string, partitions int) int {
	if i := strings.Index(id, ledger.PlacementSeparator); i > 0 {
		id = id[:i]
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % uint32(partitions))
}

// runRow opens and funds n accounts, runs the load for --duration, settles and checks.
func (hb *httpBench) runRow(ctx context.Context, n int, placement string) (rowResult, error) {
	hb.rows++
	tag := fmt.Sprintf("%s%d", hb.runID, hb.rows)
	name := hb.f.scenario
	ids := make([]string, n)
	var groups int
	switch {
	case hb.f.scenario == scenarioBatch:
		name = fmt.Sprintf("batch of %d deposits", hb.h.batchSize)
		for i := range ids {
			ids[i] = fmt.Sprintf("d%s.%d", tag, i)
		}
	case placement == "same":
		name = "transfers, same partition"
		if n < 2 {
			return rowResult{}, errors.New("--accounts: transfers need at least 2 accounts")
		}
		groups = max(1, n/hb.h.groupSize)
		for i := range ids {
			ids[i] = fmt.Sprintf("g%s.%d..a%d", tag, i%groups, i)
		}
	default:
		name = "transfers, cross partition"
		for i := range ids {
			ids[i] = fmt.Sprintf("x%s.%d", tag, i)
		}
	}
	accts := newBenchAccounts(ids, hb.f.partitions)
	accts.groups = groups
	if placement == "cross" && !slices.ContainsFunc(accts.partition, func(p int) bool { return p != accts.partition[0] }) {
		return rowResult{}, fmt.Errorf("%s: all %d accounts fall into one partition; use more accounts", name, n)
	}
	if hb.ledger != nil {
		for i, id := range ids {
			if p := hb.ledger.Partition(id); p != accts.partition[i] {
				return rowResult{}, fmt.Errorf("account %s: the ledger places it in partition %d, the bench computed %d", id, p, accts.partition[i])
			}
		}
	}

	hb.progress("%s, %d accounts: opening and funding (IDs %s…)", name, n, ids[0])
	if err := hb.setup(ctx, accts); err != nil {
		return rowResult{}, fmt.Errorf("%s, %d accounts: setup: %w", name, n, err)
	}
	hb.progress("%s, %d accounts: %d clients for %v", name, n, hb.h.clients, hb.f.duration)
	dataBefore, lockBefore, err := hb.commands(ctx)
	if err != nil {
		return rowResult{}, err
	}
	var st *loadStats
	if hb.f.scenario == scenarioBatch {
		st, err = hb.runBatch(ctx, accts)
	} else {
		st, err = hb.runTransfers(ctx, accts, placement == "same", tag)
	}
	if err != nil {
		return rowResult{}, err
	}
	dataAfter, lockAfter, err := hb.commands(ctx)
	if err != nil {
		return rowResult{}, err
	}
	perOp := func(before, after int64, ok bool) string {
		if !ok || st.ops == 0 {
			return "-"
		}
		return strconv.FormatFloat(float64(after-before)/float64(st.ops), 'f', 1, 64)
	}
	cmds := perOp(dataBefore, dataAfter, hb.counter != nil) + " / " + perOp(lockBefore, lockAfter, hb.counter != nil && len(hb.counter.masters) > 0)
	hb.progress("%s, %d accounts: settling and checking", name, n)
	check := hb.settle(ctx, accts, st)
	if check == nil {
		check = hb.check(ctx, accts, st)
	}
	label := hb.h.label
	if label == "" {
		label = "-"
	}
	verdict := "ok: " + st.checked
	if check != nil {
		verdict = "FAILED"
	}
	q := func(p float64) string { return ms(st.lat.quantile(p)) }
	fmt.Fprintf(hb.stdout, "| %s | %s | %d | %d | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
		label, name, n, st.ops, float64(st.ops)/st.elapsed.Seconds(), float64(st.requests)/st.elapsed.Seconds(),
		q(0.50), q(0.90), q(0.99), q(0.999), ms(st.lat.max), cmds,
		countsSummary(st.httpStatus), countsSummary(st.opStatus), verdict)
	return rowResult{name: name, check: check}, nil
}

// commands returns the commands the data Redis and the lock masters executed so far (0
// without --redis).
func (hb *httpBench) commands(ctx context.Context) (data, masters int64, err error) {
	if hb.counter == nil {
		return 0, 0, nil
	}
	data, masters, err = hb.counter.commandCount(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("INFO commandstats: %w", err)
	}
	return data, masters, nil
}

// setup opens every account and deposits --seed-balance into it, one account after the
// other per client, each deposit with an Idempotency-Key so that a retry (after 429, 503
// or a lost answer) cannot deposit twice.
func (hb *httpBench) setup(ctx context.Context, a *benchAccounts) error {
	return parallel(ctx, min(hb.h.clients, len(a.ids)), len(a.ids), func(i int) error {
		id := a.ids[i]
		err := hb.retry(ctx, "/v1/accounts", "", fmt.Appendf(nil, `{"id":%q}`, id), func(status int, _ []byte, attempt int) bool {
			return status == http.StatusCreated || (attempt > 0 && status == http.StatusConflict) // a retry finds it opened
		})
		if err != nil {
			return err
		}
		err = hb.retry(ctx, "/v1/accounts/"+id+"/deposits", "fund-"+id, fmt.Appendf(nil, `{"currency":"USD","amount":%d}`, hb.f.seed),
			func(status int, _ []byte, _ int) bool { return status == http.StatusCreated })
		if err != nil {
			return err
		}
		a.delta[i].Add(hb.f.seed)
		a.events[i].Add(2) // AccountOpened, Deposited
		return nil
	})
}

// retry posts body to path until ok accepts an answer, up to 10 attempts, waiting between
// them on 429, 503 and transport errors; any other answer ok refuses is an error.
func (hb *httpBench) retry(ctx context.Context, path, key string, body []byte, ok func(status int, resp []byte, attempt int) bool) error {
	var last error
	for attempt := range 10 {
		status, resp, err := hb.post(ctx, path, key, body)
		switch {
		case err == nil && ok(status, resp, attempt):
			return nil
		case err == nil && status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable:
			return fmt.Errorf("POST %s: %d %s", path, status, bytes.TrimSpace(resp))
		case err != nil:
			last = err
		default:
			last = fmt.Errorf("POST %s: %d %s", path, status, bytes.TrimSpace(resp))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 100 * time.Millisecond):
		}
	}
	return last
}

// post sends one POST and returns the status and body of the answer.
func (hb *httpBench) post(ctx context.Context, path, idemKey string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hb.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	return hb.do(req)
}

// get sends one GET and returns the status and body of the answer.
func (hb *httpBench) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hb.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	return hb.do(req)
}

func (hb *httpBench) do(req *http.Request) (int, []byte, error) {
	if hb.h.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+hb.h.apiKey)
	}
	resp, err := hb.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body) // read to the end, so the connection is reused
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

// parallel calls fn(0..n-1) from workers goroutines and returns the first error; after an
// error no new calls start.
func parallel(ctx context.Context, workers, n int, fn func(i int) error) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				mu.Lock()
				stop := first != nil
				mu.Unlock()
				if i >= n || stop || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// loadStats are the merged results of a row's clients.
type loadStats struct {
	ops, requests int64
	elapsed       time.Duration
	lat           *latencyHistogram
	httpStatus    map[string]int64 // by HTTP status, or "error" for transport errors
	opStatus      map[string]int64 // by operation outcome
	pending       []benchTransfer  // answered 202: the saga finishes them
	unknown       []benchTransfer  // no answer, or 5xx: outcome unknown until resolved
	unknownOps    int64            // batch: deposits in requests without an answer
	unknownAmount int64            // batch: their sum
	checked       string           // what the check compared, for the table
}

// benchClient is one client's share of a row's results, merged at the end.
type benchClient struct {
	lat           latencyHistogram
	ops, requests int64
	httpStatus    map[string]int64
	opStatus      map[string]int64
	pending       []benchTransfer
	unknown       []benchTransfer
	unknownOps    int64
	unknownAmount int64
}

func (c *benchClient) count(m *map[string]int64, k string) { c.add(m, k, 1) }

func (c *benchClient) add(m *map[string]int64, k string, n int64) {
	if *m == nil {
		*m = map[string]int64{}
	}
	(*m)[k] += n
}

// benchTransfer is a transfer whose outcome the client learns after the load.
type benchTransfer struct {
	id       string
	from, to int
	amount   int64
	body     []byte
}

// runClients runs hb.h.clients goroutines that call one until --duration has passed (a
// request in flight then finishes), and merges their results.
func (hb *httpBench) runClients(ctx context.Context, one func(c *benchClient, w int, rng *mrand.Rand, seq int64)) *loadStats {
	clients := make([]benchClient, hb.h.clients)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(hb.f.duration)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(start.UnixNano()), uint64(w)))
			for seq := int64(0); ctx.Err() == nil && time.Now().Before(deadline); seq++ {
				one(&clients[w], w, rng, seq)
			}
		}()
	}
	wg.Wait()
	st := &loadStats{elapsed: time.Since(start), lat: &latencyHistogram{},
		httpStatus: map[string]int64{}, opStatus: map[string]int64{}}
	for i := range clients {
		c := &clients[i]
		st.lat.merge(&c.lat)
		st.ops += c.ops
		st.requests += c.requests
		for k, v := range c.httpStatus {
			st.httpStatus[k] += v
		}
		for k, v := range c.opStatus {
			st.opStatus[k] += v
		}
		st.pending = append(st.pending, c.pending...)
		st.unknown = append(st.unknown, c.unknown...)
		st.unknownOps += c.unknownOps
		st.unknownAmount += c.unknownAmount
	}
	return st
}

// transferAnswer is the part of a transfer's answer the bench reads.
type transferAnswer struct {
	Status string `json:"status"`
}

// runTransfers moves 1..100 USD between random pairs of accounts: of one placement tag
// (same) or of different partitions (cross). Every transfer carries its own ID, so one
// whose answer was lost can be asked again afterwards.
func (hb *httpBench) runTransfers(ctx context.Context, a *benchAccounts, same bool, tag string) (*loadStats, error) {
	n := len(a.ids)
	pick := func(rng *mrand.Rand) (int, int) {
		from := rng.IntN(n)
		if same {
			// Members of from's group: from%groups + k*groups.
			g := from % a.groups
			size := (n - g + a.groups - 1) / a.groups
			for {
				if to := g + rng.IntN(size)*a.groups; to != from {
					return from, to
				}
			}
		}
		for {
			if to := rng.IntN(n); a.partition[to] != a.partition[from] {
				return from, to
			}
		}
	}
	st := hb.runClients(ctx, func(c *benchClient, w int, rng *mrand.Rand, seq int64) {
		from, to := pick(rng)
		t := benchTransfer{id: fmt.Sprintf("t%s.%d.%d", tag, w, seq), from: from, to: to, amount: 1 + rng.Int64N(100)}
		t.body = fmt.Appendf(nil, `{"id":%q,"from":%q,"to":%q,"currency":"USD","amount":%d}`, t.id, a.ids[from], a.ids[to], t.amount)
		start := time.Now()
		status, resp, err := hb.post(ctx, "/v1/transfers", "", t.body)
		d := time.Since(start)
		c.requests++
		if err != nil {
			c.count(&c.httpStatus, "error")
			c.count(&c.opStatus, "unknown")
			c.unknown = append(c.unknown, t)
			return
		}
		c.lat.record(d)
		c.count(&c.httpStatus, strconv.Itoa(status))
		outcome := hb.transferOutcome(a, t, status, resp)
		c.count(&c.opStatus, outcome)
		switch outcome {
		case ledger.TransferCompleted, ledger.TransferPending:
			c.ops++
		}
		switch outcome {
		case ledger.TransferPending:
			c.pending = append(c.pending, t)
		case "unknown":
			c.unknown = append(c.unknown, t)
		}
	})
	return st, ctx.Err()
}

// transferOutcome applies what an answer to transfer t says to a, and names it: completed
// or refunded (applied), pending (the saga finishes it), unknown (5xx or an unreadable
// answer: ask again), or "rejected <status>" (nothing was written).
func (hb *httpBench) transferOutcome(a *benchAccounts, t benchTransfer, status int, resp []byte) string {
	switch {
	case status == http.StatusCreated || status == http.StatusAccepted || status == http.StatusOK:
		var ans transferAnswer
		if err := json.Unmarshal(resp, &ans); err != nil {
			return "unknown"
		}
		switch ans.Status {
		case ledger.TransferCompleted:
			a.delta[t.from].Add(-t.amount)
			a.delta[t.to].Add(t.amount)
			a.events[t.from].Add(1)
			a.events[t.to].Add(1)
		case ledger.TransferRefunded:
			a.events[t.from].Add(2) // TransferDebited, TransferRefunded
		case ledger.TransferPending:
		default:
			return "unknown"
		}
		return ans.Status
	case status >= 500:
		return "unknown"
	default:
		return "rejected " + strconv.Itoa(status)
	}
}

// runBatch sends batches of --batch-size deposits of 1..100 USD into random accounts,
// atomic=false.
func (hb *httpBench) runBatch(ctx context.Context, a *benchAccounts) (*loadStats, error) {
	size := hb.h.batchSize
	st := hb.runClients(ctx, func(c *benchClient, _ int, rng *mrand.Rand, _ int64) {
		idx := make([]int, size)
		amounts := make([]int64, size)
		var total int64
		ids := make([]string, size)
		for i := range idx {
			idx[i], amounts[i] = rng.IntN(len(a.ids)), 1+rng.Int64N(100)
			ids[i] = a.ids[idx[i]]
			total += amounts[i]
		}
		body := depositBatch(ids, func(i int) int64 { return amounts[i] })
		start := time.Now()
		status, resp, err := hb.post(ctx, "/v1/batch", "", body)
		d := time.Since(start)
		c.requests++
		if err != nil {
			c.count(&c.httpStatus, "error")
		} else {
			c.lat.record(d)
			c.count(&c.httpStatus, strconv.Itoa(status))
		}
		var statuses []int
		if err == nil && status == http.StatusOK {
			if statuses, err = batchStatuses(resp); err == nil && len(statuses) != size {
				err = errors.New("result count")
			}
		}
		if err != nil || status >= 500 {
			c.add(&c.opStatus, "unknown", int64(size))
			c.unknownOps += int64(size)
			c.unknownAmount += total
			return
		}
		if status != http.StatusOK { // refused as a whole: nothing written
			c.add(&c.opStatus, "rejected "+strconv.Itoa(status), int64(size))
			return
		}
		for i, s := range statuses {
			c.count(&c.opStatus, strconv.Itoa(s))
			switch {
			case s == http.StatusCreated:
				c.ops++
				a.delta[idx[i]].Add(amounts[i])
				a.events[idx[i]].Add(1)
			case s >= 500: // 503 after a deadline may have been applied
				c.unknownOps++
				c.unknownAmount += amounts[i]
			}
		}
	})
	return st, ctx.Err()
}

// depositBatch returns the body of a POST /v1/batch (atomic=false) that deposits
// amount(i) USD into ids[i].
func depositBatch(ids []string, amount func(i int) int64) []byte {
	b := make([]byte, 0, 32+80*len(ids))
	b = append(b, `{"atomic":false,"operations":[`...)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"type":"deposit","account":%q,"currency":"USD","amount":%d}`, id, amount(i))
	}
	return append(b, "]}"...)
}

// batchStatuses returns the per-operation statuses of a POST /v1/batch answer.
func batchStatuses(resp []byte) ([]int, error) {
	var ans struct {
		Results []struct {
			Status int `json:"status"`
		} `json:"results"`
	}
	if err := json.Unmarshal(resp, &ans); err != nil {
		return nil, fmt.Errorf("batch answer: %w", err)
	}
	out := make([]int, len(ans.Results))
	for i, r := range ans.Results {
		out[i] = r.Status
	}
	return out, nil
}

// settle learns the final outcome of every transfer answered 202 (polling GET
// /v1/transfers/{id} until the saga ends it, at most --settle-timeout) and of every
// transfer without an answer (posting it again with its ID, which replays or finishes it).
// It returns an error when some transfer does not end in time.
func (hb *httpBench) settle(ctx context.Context, a *benchAccounts, st *loadStats) error {
	if len(st.pending) == 0 && len(st.unknown) == 0 {
		return nil
	}
	deadline := time.Now().Add(hb.h.settleTimeout)
	var mu sync.Mutex
	stuck := 0
	work := append(slices.Clone(st.pending), st.unknown...)
	firstUnknown := len(st.pending)
	err := parallel(ctx, min(hb.h.clients, len(work)), len(work), func(i int) error {
		t := work[i]
		for {
			var status int
			var resp []byte
			var err error
			if i >= firstUnknown {
				status, resp, err = hb.post(ctx, "/v1/transfers", "", t.body)
			} else {
				status, resp, err = hb.get(ctx, "/v1/transfers/"+t.id)
			}
			if err == nil {
				switch outcome := hb.transferOutcome(a, t, status, resp); {
				case outcome == ledger.TransferCompleted || outcome == ledger.TransferRefunded:
					return nil
				case strings.HasPrefix(outcome, "rejected"):
					if i < firstUnknown {
						return fmt.Errorf("GET /v1/transfers/%s of a pending transfer: %d %s", t.id, status, bytes.TrimSpace(resp))
					}
					return nil // asked again, refused: the first attempt wrote nothing either
				}
			}
			if time.Now().After(deadline) {
				mu.Lock()
				stuck++
				mu.Unlock()
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	if err != nil {
		return err
	}
	if stuck > 0 {
		return fmt.Errorf("%d of %d transfers (pending or unanswered) did not end within %v", stuck, len(work), hb.h.settleTimeout)
	}
	return nil
}

// check reads every account of the row over HTTP and compares it with what the clients
// were told: each account's posted USD balance and version (the number of its events)
// must equal the sum of the answers that applied something (exactly; within the amounts of
// unanswered batches if there were any), no balance may be negative, and the total is
// conserved. With --redis it then runs ledger.Verify (replay = snapshot for every account,
// conservation with in-flight transfers, no double debit or credit).
func (hb *httpBench) check(ctx context.Context, a *benchAccounts, st *loadStats) error {
	type got struct{ posted, version int64 }
	res := make([]got, len(a.ids))
	err := parallel(ctx, min(hb.h.clients, len(a.ids)), len(a.ids), func(i int) error {
		status, resp, err := hb.get(ctx, "/v1/accounts/"+a.ids[i])
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("GET /v1/accounts/%s: %d %s", a.ids[i], status, bytes.TrimSpace(resp))
		}
		var acc ledger.Account
		if err := json.Unmarshal(resp, &acc); err != nil {
			return fmt.Errorf("GET /v1/accounts/%s: %w", a.ids[i], err)
		}
		res[i] = got{posted: acc.Balances["USD"].Posted, version: acc.Version}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading accounts: %w", err)
	}
	var problems []string
	var total, want, events, wantEvents int64
	for i, id := range a.ids {
		g := res[i]
		wp, wv := a.delta[i].Load(), a.events[i].Load() // setup added the seed balance and 2 events
		total, want, events, wantEvents = total+g.posted, want+wp, events+g.version, wantEvents+wv
		if g.posted < 0 {
			problems = append(problems, fmt.Sprintf("%s: posted balance %d is negative", id, g.posted))
		}
		if st.unknownOps == 0 && (g.posted != wp || g.version != wv) {
			problems = append(problems, fmt.Sprintf("%s: posted %d version %d, the answers add up to posted %d version %d", id, g.posted, g.version, wp, wv))
		}
		if st.unknownOps > 0 && (g.posted < wp || g.version < wv) {
			problems = append(problems, fmt.Sprintf("%s: posted %d version %d, below what the answers add up to (posted %d version %d)", id, g.posted, g.version, wp, wv))
		}
	}
	if st.unknownOps == 0 && total != want {
		problems = append(problems, fmt.Sprintf("money not conserved: Σ posted %d, expected %d", total, want))
	}
	if st.unknownOps > 0 && (total-want > st.unknownAmount || events-wantEvents > st.unknownOps) {
		problems = append(problems, fmt.Sprintf("Σ posted %d and Σ versions %d exceed what was acknowledged (%d, %d) by more than the unanswered deposits (%d ops, %d)",
			total, events, want, wantEvents, st.unknownOps, st.unknownAmount))
	}
	st.checked = fmt.Sprintf("Σ posted %d, Σ versions %d", total, events)
	if hb.ledger != nil && len(problems) == 0 {
		rep, err := hb.ledger.Verify(ctx)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		for _, p := range rep.Problems {
			problems = append(problems, "verify: "+p)
		}
		st.checked += fmt.Sprintf("; verify: %d accounts, %d events, %d transfers", rep.Accounts, rep.Events, rep.Transfers)
	}
	if len(problems) > 0 {
		const show = 10
		if len(problems) > show {
			problems = append(problems[:show], fmt.Sprintf("… and %d more", len(problems)-show))
		}
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// countsSummary returns "k=n k=n" in key order.
func countsSummary(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// latencyHistogram is a log-linear histogram of durations in microseconds: exact below
// 128 µs, then 64 buckets per power of two (a bucket is at most 1/64 of its lower bound
// wide), up to 2^40 µs. Its memory is fixed whatever the number of samples.
type latencyHistogram struct {
	counts [histBuckets]int64
	n      int64
	max    time.Duration
}

const (
	histSubBits = 6                                           // 64 buckets per power of two
	histExact   = 2 << histSubBits                            // values below are exact
	histBuckets = histExact + (40-histSubBits-1)<<histSubBits // up to 2^40 µs
)

func histIndex(us uint64) int {
	if us < histExact {
		return int(us)
	}
	shift := bits.Len64(us) - histSubBits - 1 // us>>shift in [64, 128)
	i := histExact + (shift-1)<<histSubBits + int(us>>shift) - 1<<histSubBits
	return min(i, histBuckets-1)
}

// histUpper returns the largest value (µs) of bucket i.
func histUpper(i int) uint64 {
	if i < histExact {
		return uint64(i)
	}
	j := i - histExact
	shift := j>>histSubBits + 1
	m := uint64(j&(1<<histSubBits-1)) + 1<<histSubBits
	return (m+1)<<shift - 1
}

func (h *latencyHistogram) record(d time.Duration) {
	h.counts[histIndex(uint64(max(d, 0)/time.Microsecond))]++
	h.n++
	h.max = max(h.max, d)
}

func (h *latencyHistogram) merge(x *latencyHistogram) {
	for i, c := range x.counts {
		h.counts[i] += c
	}
	h.n += x.n
	h.max = max(h.max, x.max)
}

// quantile returns the upper bound of the bucket holding the q-quantile (nearest rank),
// capped at the largest value recorded, or 0 without samples.
func (h *latencyHistogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := max(int64(q*float64(h.n)+0.5), 1)
	var seen int64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			return min(time.Duration(histUpper(i))*time.Microsecond, h.max)
		}
	}
	return h.max
}
