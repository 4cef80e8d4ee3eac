// Package bench is Tally's load test, `tally bench`: it drives the ledger library on a
// Redis (or a running `tally serve` over HTTP) with a mix of deposits, withdrawals,
// transfers and holds, sweeping account counts, concurrency modes and group commit;
// measures throughput and latency quantiles (HDR histograms), errors by the API's problem
// codes, conflicts, retries and lease waits; measures the raw commit ceiling of the same
// Redis to put every result in proportion; and checks each run's correctness at its end, so
// that a fast wrong run fails.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/ledger"
)

// Report is the outcome of Run: the raw commit ceiling and one Result per run.
type Report struct {
	// CeilingOpsPerSec is the raw commit ceiling of the data Redis (ceiling script calls per
	// second), or nil when it was not measured (no Redis, or skipped).
	CeilingOpsPerSec *float64 `json:"ceiling_ops_per_sec"`
	// CeilingRedisCPUUs is the data Redis's CPU time per ceiling script call, in
	// microseconds (INFO cpu; nil when not measured). A run whose redis_cpu_us_per_op is k
	// times it reaches about 1/k of the ceiling when Redis is as busy as it was while the
	// ceiling was measured.
	CeilingRedisCPUUs *float64 `json:"ceiling_redis_cpu_us_per_op"`
	Runs              []Result `json:"runs"`
}

// OK reports whether every run passed its correctness check.
func (r Report) OK() bool { return r.Failed() == 0 }

// Failed returns the number of runs that failed their correctness check.
func (r Report) Failed() int {
	n := 0
	for _, x := range r.Runs {
		if !x.Correct {
			n++
		}
	}
	return n
}

// Result is one run: one account count, mode and group commit setting.
type Result struct {
	Mode        string  `json:"mode"`
	GroupCommit bool    `json:"group_commit"`
	Accounts    int     `json:"accounts"`
	Workers     int     `json:"workers"`
	OpsPerSec   float64 `json:"ops_per_sec"` // answered operations (applied or rejected) per second
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	Errors      int64   `json:"errors"` // operations that failed (not counting expected rejections)
	Correct     bool    `json:"correct"`

	Target          string           `json:"target"` // "library" or the server's URL
	Mix             string           `json:"mix"`
	Ops             int64            `json:"ops"`      // answered operations
	Applied         int64            `json:"applied"`  // operations that succeeded
	Rejected        int64            `json:"rejected"` // refused for insufficient funds
	OpsByKind       map[string]int64 `json:"ops_by_kind"`
	DurationSec     float64          `json:"duration_s"`
	P90Ms           float64          `json:"p90_ms"`
	P999Ms          float64          `json:"p999_ms"`
	MaxMs           float64          `json:"max_ms"`
	CeilingFraction *float64         `json:"ceiling_fraction"` // ops_per_sec / ceiling_ops_per_sec
	ErrorsByCode    map[string]int64 `json:"errors_by_code"`
	// Conflicts, Retries, LockFailures and CommitsPerOp come from ledger.Stats (over HTTP:
	// the server's /metrics); nil when unknown.
	Conflicts      *int64   `json:"conflicts"`
	Retries        *int64   `json:"retries"`
	LockFailures   *int64   `json:"lock_failures"`
	CommitsPerOp   *float64 `json:"commits_per_op"`
	LeaseWaitP50Ms *float64 `json:"lease_wait_p50_ms"`
	LeaseWaitP99Ms *float64 `json:"lease_wait_p99_ms"`
	DataCmdsPerOp  *float64 `json:"data_cmds_per_op"` // commands the data Redis executed per answered operation
	LockCmdsPerOp  *float64 `json:"lock_cmds_per_op"` // the same, summed over the lock masters
	// CPU time per answered operation, in microseconds, of each side of the run (nil when
	// not measured): ClientCPUUs this process's (the load generator, and without --target
	// the ledger it drives: getrusage), ServerCPUUs the servers' under --target (the sum of
	// every replica's process_cpu_seconds_total on /metrics), RedisCPUUs the data Redis's
	// (INFO cpu, summed over a Cluster's masters), LockCPUUs the lock masters' (INFO cpu,
	// summed; nil without --lock-redis).
	ClientCPUUs *float64 `json:"client_cpu_us_per_op"`
	ServerCPUUs *float64 `json:"server_cpu_us_per_op"`
	RedisCPUUs  *float64 `json:"redis_cpu_us_per_op"`
	LockCPUUs   *float64 `json:"lock_cpu_us_per_op"`
	// ServerRSSMaxMB is the largest resident set of any --target replica during the load,
	// in MiB: process_resident_memory_bytes on its /metrics, sampled every 250 ms (nil
	// without --target, or when the server does not report it).
	ServerRSSMaxMB *float64 `json:"server_rss_max_mb"`
	Check          string   `json:"check"` // what the correctness check compared
	Problems       []string `json:"problems,omitempty"`
}

// Run measures the ceiling (when it has a Redis), then runs every combination of
// cfg.Accounts, cfg.Modes and cfg.GroupCommit, printing a table row to cfg.Out as each
// completes. It returns an error for an invalid cfg or when a run cannot be set up or
// checked (Redis down, setup refused); a run whose check finds a problem is a Result with
// Correct false, not an error (see Report.OK).
func Run(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	given := cfg
	cfg = cfg.withDefaults()
	r := &runner{runID: newRunID(), progress: newProgress(cfg.Progress, cfg.Now)}
	if cfg.Target != "" {
		var err error
		if r.http, err = newHTTPDriver(cfg.Target, cfg.APIKey, cfg.Workers, cfg.HTTPTimeout, cfg.Spread == SpreadWorker); err != nil {
			return Report{}, err
		}
		defer r.http.close()
		if cfg, err = cfg.withServer(ctx, given, r.http); err != nil {
			return Report{}, err
		}
		if cfg.Redis != nil {
			// The server's ledger, to verify it: the prefix serve uses; Open fails on a
			// partition count other than the server's.
			if r.verifier, err = ledger.Open(ctx, cfg.Redis, ledger.Config{Prefix: "tally", Partitions: cfg.Partitions}); err != nil {
				return Report{}, fmt.Errorf("bench: the server's ledger: %w", err)
			}
		}
	}

	r.cfg = cfg
	var rep Report
	if cfg.Redis != nil && cfg.CeilingDuration > 0 {
		r.progress.status("measuring the raw commit ceiling (%d connections, %v)", cfg.CeilingConns, cfg.CeilingDuration)
		c, err := measureCeiling(ctx, cfg.Redis, r.nextPrefix(), cfg.CeilingConns, cfg.CeilingDuration, cfg.Now)
		r.progress.clear()
		if err != nil {
			return Report{}, err
		}
		rep.CeilingOpsPerSec, rep.CeilingRedisCPUUs = &c.opsPerSec, c.redisCPUUs
	}
	r.ceiling = rep.CeilingOpsPerSec
	writeHeader(cfg, rep)
	for _, n := range cfg.Accounts {
		for _, mode := range cfg.Modes {
			for _, gc := range cfg.GroupCommit {
				res, err := r.one(ctx, spec{mode: mode, groupCommit: gc, accounts: n})
				if err != nil {
					return rep, fmt.Errorf("bench: %s, group commit %v, %d accounts: %w", mode, gc, n, err)
				}
				rep.Runs = append(rep.Runs, res)
				writeRow(cfg.Out, res)
			}
		}
	}
	writeFooter(cfg.Out, rep)
	return rep, ctx.Err()
}

// spec is one combination of the sweep.
type spec struct {
	mode        ledger.Mode
	groupCommit bool
	accounts    int
}

// runner holds what the runs of one Run share.
type runner struct {
	cfg      Config
	runID    string
	n        int // prefixes handed out
	http     *httpDriver
	verifier *ledger.Ledger // with Target and Redis: the server's ledger
	ceiling  *float64
	progress *progress
}

// newRunID returns a short random ID that keeps this Run's keys and account IDs apart from
// every other's (and from real accounts on a shared server or lock masters).
func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// nextPrefix returns a fresh prefix for keys or account IDs.
func (r *runner) nextPrefix() string {
	r.n++
	return fmt.Sprintf("%s-%s-%d", r.cfg.Prefix, r.runID, r.n)
}

// state is what the clients of one run were told about its accounts: every answer that
// applied something adds its amount to the account's expected posted balance.
type state struct {
	ids       []string
	expected  []atomic.Int64
	uncertain []atomic.Bool // an answer was lost: the account's exact balance is unknown
}

func newState(ids []string, seed int64) *state {
	s := &state{ids: ids, expected: make([]atomic.Int64, len(ids)), uncertain: make([]atomic.Bool, len(ids))}
	for i := range ids {
		s.expected[i].Store(seed)
	}
	return s
}

// one runs the load of one spec and checks it.
func (r *runner) one(ctx context.Context, sp spec) (Result, error) {
	cfg := r.cfg
	prefix := r.nextPrefix()
	res := Result{Mode: string(sp.mode), GroupCommit: sp.groupCommit, Accounts: sp.accounts, Workers: cfg.Workers,
		Target: "library", ErrorsByCode: map[string]int64{}, OpsByKind: map[string]int64{}}
	mix := cfg.Mix
	if sp.accounts < 2 {
		mix = mix.without(Transfer) // a transfer needs two accounts
	}
	if mix.total() == 0 {
		mix = Mix{Weights: [numKinds]int{Deposit: 1}}
	}
	res.Mix = mix.String()

	var (
		d     driver
		l     *ledger.Ledger
		stats func(ctx context.Context) (ledger.Stats, bool)
	)
	if r.http != nil {
		res.Target = strings.Join(r.http.bases, ",")
		d = r.http
		stats = r.http.stats
	} else {
		lcfg := ledger.Config{Prefix: prefix, Partitions: cfg.Partitions, Mode: sp.mode,
			DisableGroupCommit: !sp.groupCommit, MaxBatch: cfg.MaxBatch}
		if sp.mode == ledger.ModeLock {
			lcfg.Locker = cfg.Locker
		}
		var err error
		if l, err = ledger.Open(ctx, cfg.Redis, lcfg); err != nil {
			return res, err
		}
		if !cfg.KeepKeys {
			defer func() { _ = deletePrefix(context.WithoutCancel(ctx), cfg.Redis, prefix) }()
		}
		d = libraryDriver{l: l}
		stats = func(context.Context) (ledger.Stats, bool) { return l.Stats(), true }
	}

	ids := make([]string, sp.accounts)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s.%d", prefix, i)
	}
	st := newState(ids, cfg.SeedBalance)
	label := fmt.Sprintf("%s, group commit %s, %d accounts", sp.mode, onOff(sp.groupCommit), sp.accounts)
	r.progress.status("%s: opening and funding the accounts", label)
	if err := openAccounts(ctx, d, ids, cfg.SeedBalance, cfg.Workers); err != nil {
		return res, fmt.Errorf("setup: %w", err)
	}

	counter := commandCounter{data: cfg.Redis, masters: cfg.LockMasters}
	dataBefore, mastersBefore, countOK := counter.count(ctx)
	if cfg.LeaseWaits != nil {
		cfg.LeaseWaits.take()
	}
	before, statsOK := stats(ctx)
	cpuBefore := r.sampleCPU(ctx)

	ld := &load{r: r, d: d, st: st, mix: mix, tag: strings.ReplaceAll(prefix, "-", "")}
	var rss *rssWatch
	if r.http != nil {
		rss = watchRSS(ctx, r.http, rssEvery)
	}
	out := ld.run(ctx, label)
	if rss != nil {
		res.ServerRSSMaxMB = rss.stop(ctx)
	}
	res.DurationSec = out.elapsed.Seconds()
	cpu := perOpCPU(cpuBefore, r.sampleCPU(ctx), out.applied+out.rejected)
	res.ClientCPUUs, res.ServerCPUUs, res.RedisCPUUs, res.LockCPUUs = cpu.client, cpu.server, cpu.redis, cpu.lock

	after, statsOK2 := stats(ctx)
	dataAfter, mastersAfter, countOK2 := counter.count(ctx)
	answered := out.applied + out.rejected
	perOp := func(n int64) *float64 {
		if answered == 0 {
			return nil
		}
		v := float64(n) / float64(answered)
		return &v
	}
	if statsOK && statsOK2 {
		c, rt, lf := after.Conflicts-before.Conflicts, after.Retries-before.Retries, after.LockFailures-before.LockFailures
		res.Conflicts, res.Retries, res.LockFailures = &c, &rt, &lf
		if ops := after.Operations - before.Operations; ops > 0 {
			v := float64(after.Commits-before.Commits) / float64(ops)
			res.CommitsPerOp = &v
		}
	}
	if countOK && countOK2 {
		res.DataCmdsPerOp = perOp(dataAfter - dataBefore)
		if len(cfg.LockMasters) > 0 {
			res.LockCmdsPerOp = perOp(mastersAfter - mastersBefore)
		}
	}
	if cfg.LeaseWaits != nil && sp.mode == ledger.ModeLock && r.http == nil {
		if w := cfg.LeaseWaits.take(); w.Count() > 0 {
			p50, p99 := ms(w.Quantile(0.50)), ms(w.Quantile(0.99))
			res.LeaseWaitP50Ms, res.LeaseWaitP99Ms = &p50, &p99
		}
	}
	res.Ops, res.Applied, res.Rejected = answered, out.applied, out.rejected
	res.OpsPerSec = float64(answered) / max(out.elapsed.Seconds(), 1e-9)
	if r.ceiling != nil && *r.ceiling > 0 {
		f := res.OpsPerSec / *r.ceiling
		res.CeilingFraction = &f
	}
	res.P50Ms, res.P90Ms, res.P99Ms = ms(out.lat.Quantile(0.50)), ms(out.lat.Quantile(0.90)), ms(out.lat.Quantile(0.99))
	res.P999Ms, res.MaxMs = ms(out.lat.Quantile(0.999)), ms(out.lat.Max())
	for code, n := range out.errors {
		res.ErrorsByCode[code] = n
		res.Errors += n
	}
	for k, n := range out.byKind {
		if n > 0 {
			res.OpsByKind[Kind(k).String()] = n
		}
	}

	r.progress.status("%s: settling %d pending operations", label, len(out.unsettled))
	problems := ld.settle(ctx, out)
	if cfg.AfterLoad != nil {
		if err := cfg.AfterLoad(RunInfo{Prefix: prefix, Accounts: ids, Ledger: l}); err != nil {
			return res, fmt.Errorf("after load: %w", err)
		}
	}
	r.progress.status("%s: checking", label)
	check, more, err := r.check(ctx, d, l, st, out)
	r.progress.clear()
	if err != nil {
		return res, fmt.Errorf("check: %w", err)
	}
	res.Check = check
	res.Problems = append(problems, more...)
	res.Correct = len(res.Problems) == 0
	return res, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// openAccounts opens every account and deposits seed into it through d, from up to
// workers goroutines, retrying answers that leave the outcome unknown or say "not now"
// (each step carries an idempotency key, so that a retry cannot open or fund twice).
func openAccounts(ctx context.Context, d driver, ids []string, seed int64, workers int) error {
	return parallel(ctx, min(workers, len(ids)), len(ids), func(i int) error {
		var err error
		for attempt := range 10 {
			if err = d.open(ctx, ids[i], seed); err == nil {
				return nil
			}
			if !Classify(err).retryable() || ctx.Err() != nil {
				return fmt.Errorf("account %s: %w", ids[i], err)
			}
			if err := backoff.Wait(ctx, retryDelay(attempt+1)); err != nil {
				return err
			}
		}
		return fmt.Errorf("account %s: %w", ids[i], err)
	})
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
	for range max(workers, 1) {
		wg.Go(func() {
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
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// rngFor returns a random source for worker w.
func rngFor(w int) *mrand.Rand {
	return mrand.New(mrand.NewPCG(mrand.Uint64(), uint64(w)))
}

// sampleCPU reads the CPU time each side of a run used so far (see cpuSample).
func (r *runner) sampleCPU(ctx context.Context) cpuSample {
	return sampleCPU(ctx, r.http, r.cfg.Redis, r.cfg.LockMasters)
}

// writeHeader describes the load and the ceiling, and starts the table.
func writeHeader(cfg Config, rep Report) {
	ceiling := rep.CeilingOpsPerSec
	limit := cfg.Duration.String()
	if cfg.Ops > 0 {
		limit += fmt.Sprintf(" or %d operations, whichever comes first", cfg.Ops)
	}
	target := fmt.Sprintf("the ledger library: %d partitions, max batch %d", cfg.Partitions, cfg.MaxBatch)
	if cfg.Target != "" {
		target = fmt.Sprintf("tally serve at %s over HTTP (%d partitions)", cfg.Target, cfg.Partitions)
	}
	fmt.Fprintf(cfg.Out, "Load on %s; mix %s, %d workers, %s per run, seed balance %d; GOMAXPROCS %d, %s.\n",
		target, cfg.Mix, cfg.Workers, limit, cfg.SeedBalance, runtime.GOMAXPROCS(0), runtime.Version())
	if ceiling != nil {
		cpu := ""
		if rep.CeilingRedisCPUUs != nil {
			cpu = fmt.Sprintf("; Redis CPU %.1f µs per call", *rep.CeilingRedisCPUUs)
		}
		fmt.Fprintf(cfg.Out, "Raw commit ceiling of the data Redis: %.0f ops/s (one 5-step compare-and-append script call per operation, %d connections, %v%s).\n",
			*ceiling, cfg.CeilingConns, cfg.CeilingDuration, cpu)
	} else {
		fmt.Fprintln(cfg.Out, "Raw commit ceiling: not measured (no data Redis given, or skipped).")
	}
	fmt.Fprint(cfg.Out, "\n"+tableHeader)
}
