package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/term"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// benchFlags configure `tally bench`.
type benchFlags struct {
	redis           redisFlags
	lock            lockFlags
	scenario        string
	workers         int
	duration        time.Duration
	ops             int64
	accounts        string
	modes           string
	groupCommit     string
	mix             string
	partitions      int
	maxBatch        int
	withdrawEvery   int
	seed            int64
	prefix          string
	cleanup         bool
	checkSample     int
	ceilingDuration time.Duration
	ceilingConns    int
	jsonOut         string
	csvOut          string
	svgOut          string
	cpuProfile      string
	rate            int
	backlog         int
	pollInterval    time.Duration
	drainTimeout    time.Duration
	logLevel        string
}

const benchUsage = `usage: tally bench [--redis host:port | --redis-cluster host:port,... | --target http://host:port] [flags]

Load test. Without --target it drives the ledger library on the data Redis (an embedded
in-memory Redis when neither --redis nor --redis-cluster is given: fine for a try, not
comparable with a real redis-server), each run under a fresh key prefix, deleted afterwards.
With --target it loads a running tally serve over HTTP (--redis then names the server's
data Redis: optional, for the ceiling and tally verify). Every run ends with a correctness
check; a run that fails it makes bench exit non-zero.

Scenarios: modes (default: the operation mix, swept over --accounts x --modes x
--group-commit), relay (outbox relay throughput and lag), transfers and batch (HTTP load
on --target).
`

// runBench parses the flags and runs the chosen scenario. It returns an error for invalid
// flags, an unreachable Redis or server, a failed setup, or a run whose correctness check
// failed (after writing every output).
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	var f benchFlags
	fs := newFlagSet("bench", stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\nflags:\n", benchUsage)
		fs.PrintDefaults()
	}
	f.redis.registerEmbedded(fs)
	f.lock.register(fs)
	fs.StringVar(&f.scenario, "scenario", "modes", "modes (the operation mix over accounts × modes × group commit) | relay (outbox relay throughput and lag) | transfers, batch (HTTP load on a running serve at --target)")
	fs.IntVar(&f.workers, "workers", bench.DefaultWorkers, "concurrent writers, each in a closed loop")
	fs.DurationVar(&f.duration, "duration", bench.DefaultDuration, "measured time per run (relay: the steady-rate phase)")
	fs.Int64Var(&f.ops, "ops", 0, "modes: stop a run after this many operations (0: only --duration)")
	fs.StringVar(&f.accounts, "accounts", "", "comma-separated account counts to sweep (default: modes 1,10000; relay 1000; transfers, batch 10000)")
	fs.StringVar(&f.modes, "modes", "", "comma-separated concurrency modes: optimistic, lock (default both; with --target the server's mode, read from its /metrics: one value at most, which must match it)")
	fs.StringVar(&f.groupCommit, "group-commit", "", "comma-separated group commit settings: true, false (default both; with --target the server's setting, read from its /metrics: one value at most, which must match it)")
	fs.StringVar(&f.mix, "mix", "", "operation mix, e.g. deposit=70,withdrawal=10,transfer=15,hold=5 (a hold is placed, then captured or voided); default: from --withdraw-every")
	fs.IntVar(&f.partitions, "partitions", 0, "partition count (default 16; with --target the server's, read from its /metrics)")
	fs.IntVar(&f.maxBatch, "max-batch", bench.DefaultMaxBatch, "largest group commit")
	fs.IntVar(&f.withdrawEvery, "withdraw-every", 10, "without --mix: one operation in this many is a withdrawal, the others deposits (0: deposits only)")
	fs.Int64Var(&f.seed, "seed-balance", bench.DefaultSeedBalance, "amount deposited into every account during setup, so that withdrawals do not run dry")
	fs.StringVar(&f.prefix, "prefix", bench.DefaultPrefix, "key prefix and start of account IDs; each run appends a run ID and its number")
	fs.BoolVar(&f.cleanup, "cleanup", true, "delete each run's keys when it is done")
	fs.IntVar(&f.checkSample, "check-sample", 100, "with --target: accounts per run whose events are replayed over HTTP and compared with their snapshot (0: none)")
	fs.DurationVar(&f.ceilingDuration, "ceiling-duration", 3*time.Second, "how long the raw commit ceiling of the data Redis is measured (0: skip)")
	fs.IntVar(&f.ceilingConns, "ceiling-conns", 64, "connections the raw commit ceiling is measured from")
	fs.StringVar(&f.jsonOut, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&f.csvOut, "csv", "", "also write the results as CSV to this file")
	fs.StringVar(&f.svgOut, "svg", "", "also draw throughput and p99 against accounts, a line per mode, as SVG to this file")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the load generator and, without --target, the ledger it drives) to this file, for go tool pprof")
	fs.IntVar(&f.rate, "rate", 5000, "relay: steady ledger write rate in operations/s")
	fs.IntVar(&f.backlog, "backlog", 50_000, "relay: operations written before the relay starts, to measure its throughput on a backlog")
	fs.DurationVar(&f.pollInterval, "poll-interval", outbox.DefaultPollInterval, "relay: wait after a read found nothing new")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", time.Minute, "relay: longest wait for the relay to deliver everything written")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the lock and relay: debug | info | warn | error")
	hf := registerHTTPBenchFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := f.validate(hf); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logLevel, "text")
	if err != nil {
		return err
	}
	if f.cpuProfile != "" {
		stop, perr := startCPUProfile(f.cpuProfile)
		if perr != nil {
			return perr
		}
		defer func() { err = errors.Join(err, stop()) }()
	}
	switch f.scenario {
	case "relay":
		return runRelayBench(ctx, f, log, stdout, stderr)
	case bench.ScenarioTransfers, bench.ScenarioBatch:
		return runHTTPBench(ctx, f, hf, log, stdout, stderr)
	}
	return runLoadBench(ctx, f, hf, log, stdout, stderr)
}

// validate checks the flags that no bench config checks: the scenario, the choice of Redis,
// and the flags whose zero or negative value a config would silently replace with its
// default or read as "skip" (given explicitly, such a value is a mistake). The rest is
// checked by the scenario's config (see benchFlagError).
func (f *benchFlags) validate(h *httpBenchFlags) error {
	switch f.scenario {
	case "modes", "relay", bench.ScenarioTransfers, bench.ScenarioBatch:
	default:
		return fmt.Errorf("--scenario must be modes, relay, transfers or batch, got %q", f.scenario)
	}
	if err := f.redis.check(true); err != nil {
		return err
	}
	for _, p := range []struct {
		flag     string
		ok       bool
		positive bool // else: must not be negative
	}{
		{"--workers", f.workers > 0, true},
		{"--duration", f.duration > 0, true},
		{"--max-batch", f.maxBatch > 0, true},
		{"--seed-balance", f.seed > 0, true},
		{"--ceiling-conns", f.ceilingConns > 0, true},
		{"--rate", f.rate > 0, true},
		{"--poll-interval", f.pollInterval > 0, true},
		{"--drain-timeout", f.drainTimeout > 0, true},
		{"--clients", h.clients > 0, true},
		{"--group-size", h.groupSize > 0, true},
		{"--batch-size", h.batchSize > 0, true},
		{"--http-timeout", h.timeout > 0, true},
		{"--settle-timeout", h.settleTimeout > 0, true},
		{"--partitions", f.partitions >= 0, false},
		{"--backlog", f.backlog >= 0, false},
		{"--withdraw-every", f.withdrawEvery >= 0, false},
		{"--ceiling-duration", f.ceilingDuration >= 0, false},
		{"--check-sample", f.checkSample >= 0, false},
	} {
		switch {
		case !p.ok && p.positive:
			return fmt.Errorf("%s must be positive", p.flag)
		case !p.ok:
			return fmt.Errorf("%s must not be negative", p.flag)
		}
	}
	switch {
	case f.prefix == "":
		return errors.New("--prefix must not be empty")
	case len(splitList(h.placement)) == 0:
		return errors.New("--placement names no placement")
	}
	return nil
}

// benchFlagError turns a *bench.FieldError into an error about the flag that sets the
// field, so that the bench configs' refusals read as the command line's; other errors are
// returned as they are.
func benchFlagError(err error) error {
	var fe *bench.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	flag, ok := map[string]string{
		"Scenario": "--scenario", "Target": "--target", "Accounts": "--accounts", "Modes": "--modes", "GroupCommit": "--group-commit", "Mix": "--mix",
		"Workers": "--workers", "Clients": "--clients", "Duration": "--duration", "Ops": "--ops",
		"Partitions": "--partitions", "MaxBatch": "--max-batch", "SeedBalance": "--seed-balance", "Prefix": "--prefix",
		"CheckSample": "--check-sample", "CeilingConns": "--ceiling-conns", "HTTPTimeout": "--http-timeout", "Spread": "--spread",
		"GroupSize": "--group-size", "BatchSize": "--batch-size", "Placements": "--placement",
		"SettleTimeout": "--settle-timeout", "Rate": "--rate", "WithdrawEvery": "--withdraw-every",
		"PollInterval": "--poll-interval", "DrainTimeout": "--drain-timeout",
	}[fe.Field]
	if !ok {
		return err
	}
	return fmt.Errorf("%s %s", flag, fe.Reason)
}

// runLoadBench wires the flags into a bench.Config, checks it before it connects to
// anything, runs it and writes the requested files.
func runLoadBench(ctx context.Context, f benchFlags, hf *httpBenchFlags, log *slog.Logger, stdout, stderr io.Writer) error {
	cfg := bench.Config{
		Target: hf.target, Spread: hf.spread, APIKey: hf.apiKey, HTTPTimeout: hf.timeout,
		Workers: f.workers, Duration: f.duration, Ops: f.ops, Partitions: f.partitions, MaxBatch: f.maxBatch,
		SeedBalance: f.seed, Prefix: f.prefix, KeepKeys: !f.cleanup, CheckSample: f.checkSample,
		CeilingDuration: f.ceilingDuration, CeilingConns: f.ceilingConns, Out: stdout, Progress: progressTo(stderr),
	}
	if f.ceilingDuration == 0 {
		cfg.CeilingDuration = -1
	}
	if f.checkSample == 0 {
		cfg.CheckSample = -1
	}
	var err error
	if cfg.Mix, err = benchMix(f.mix, f.withdrawEvery); err != nil {
		return fmt.Errorf("--mix: %w", err)
	}
	if cfg.Accounts, err = parseCounts(f.accounts, "1,10000"); err != nil {
		return err
	}
	for _, m := range splitList(f.modes) {
		cfg.Modes = append(cfg.Modes, ledger.Mode(m))
	}
	for _, g := range splitList(f.groupCommit) {
		v, err := parseOnOff(g)
		if err != nil {
			return fmt.Errorf("--group-commit: %w", err)
		}
		cfg.GroupCommit = append(cfg.GroupCommit, v)
	}

	embedded := f.redis.addr == "" && f.redis.cluster == ""
	var data *dataRedis
	if cfg.Target == "" || !embedded {
		if data, err = f.redis.open(true); err != nil {
			return err
		}
		defer data.close()
		cfg.Redis = data.client
	}
	var locker *lock.Locker
	if cfg.Target == "" && (len(cfg.Modes) == 0 || slices.Contains(cfg.Modes, ledger.ModeLock)) {
		waits := bench.NewLeaseWaits()
		var closeLocker func()
		if locker, closeLocker, err = f.lock.newLocker(cfg.Redis, log, lock.Hooks{Acquired: waits.Acquired}, f.lock.ttl); err != nil {
			return err
		}
		defer closeLocker()
		cfg.Locker, cfg.LeaseWaits = locker, waits
	}
	if locker != nil || cfg.Target != "" {
		// The masters' commands and CPU are counted, the server's leases too with --target.
		var closeMasters func()
		cfg.LockMasters, closeMasters = lockMasterClients(f.lock)
		defer closeMasters()
	}
	if err := cfg.Validate(); err != nil {
		return benchFlagError(err)
	}

	if data != nil {
		// The embedded Redis is expected here: its NOT DURABLE warning would only alarm.
		startLog := log
		if embedded {
			startLog = slog.New(slog.DiscardHandler)
		}
		if err := data.start(ctx, startLog); err != nil {
			return err
		}
		switch {
		case embedded:
			fmt.Fprintln(stdout, "Redis: embedded, in this process (in-memory, single-threaded Lua in Go): numbers are not comparable with a real redis-server's; give --redis for those.")
		case f.redis.addr != "":
			fmt.Fprintf(stdout, "Redis: %s.\n", f.redis.addr)
		default:
			fmt.Fprintf(stdout, "Redis Cluster: %s.\n", f.redis.cluster)
		}
	}
	if locker != nil {
		fmt.Fprintf(stdout, "Lock mode: %d master(s), quorum %d.\n", max(len(cfg.LockMasters), 1), locker.Quorum())
	}

	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return benchFlagError(err) // a flag the --target server contradicts
	}
	for _, out := range []struct {
		path  string
		write func(io.Writer) error
	}{{f.jsonOut, rep.WriteJSON}, {f.csvOut, rep.WriteCSV}, {f.svgOut, rep.WriteSVG}} {
		if out.path == "" {
			continue
		}
		if err := writeFile(out.path, out.write); err != nil {
			return err
		}
	}
	if n := rep.Failed(); n > 0 {
		return fmt.Errorf("bench: %d of %d runs failed their correctness check", n, len(rep.Runs))
	}
	return nil
}

// lockMasterClients returns a client of each --lock-redis master, for bench to count the
// commands they execute, and a function that closes them. Unusable connection settings
// were refused by newLocker before; here they yield no clients.
func lockMasterClients(f lockFlags) ([]*redis.Client, func()) {
	var cs []*redis.Client
	opts, _ := f.masterOptions()
	for _, o := range opts {
		cs = append(cs, redis.NewClient(o))
	}
	return cs, func() {
		for _, c := range cs {
			c.Close()
		}
	}
}

// progressTo returns w when it is a terminal, where bench may draw its progress line, and
// nil otherwise.
func progressTo(w io.Writer) io.Writer {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return w
	}
	return nil
}

// errBenchRelayAccounts is --accounts with several counts for the relay scenario.
var errBenchRelayAccounts = errors.New("--accounts: the relay scenario takes one account count")

// benchMix returns the --mix, or without it deposits with one withdrawal in withdrawEvery.
func benchMix(mix string, withdrawEvery int) (bench.Mix, error) {
	if mix != "" {
		return bench.ParseMix(mix)
	}
	if withdrawEvery == 0 {
		return bench.ParseMix("deposit=1")
	}
	return bench.ParseMix("deposit=" + strconv.Itoa(withdrawEvery-1) + ",withdrawal=1")
}

// writeFile writes a result file through write, replacing it.
func writeFile(path string, write func(io.Writer) error) error {
	fh, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(fh); err != nil {
		fh.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return fh.Close()
}

// parseCounts parses a comma-separated list of positive integers (def when s is empty).
func parseCounts(s, def string) ([]int, error) {
	if s == "" {
		s = def
	}
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(strings.ReplaceAll(p, "_", ""))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--accounts: %q is not a positive number", p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("--accounts: no account count given")
	}
	return out, nil
}

func parseOnOff(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "on", "true", "1", "yes":
		return true, nil
	case "off", "false", "0", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is neither true nor false", s)
}

// startCPUProfile starts Go's CPU profiler writing to path; stop ends the profile and closes
// the file.
func startCPUProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		return nil
	}, nil
}
