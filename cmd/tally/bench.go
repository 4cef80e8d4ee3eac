package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f benchFlags
	fs := newFlagSet("bench", stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\nflags:\n", benchUsage)
		fs.PrintDefaults()
	}
	f.redis.registerEmbedded(fs)
	f.lock.register(fs)
	fs.StringVar(&f.scenario, "scenario", "modes", "modes (the operation mix over accounts × modes × group commit) | relay (outbox relay throughput and lag) | transfers, batch (HTTP load on a running serve at --target)")
	fs.IntVar(&f.workers, "workers", 64, "concurrent writers, each in a closed loop")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "measured time per run (relay: the steady-rate phase)")
	fs.Int64Var(&f.ops, "ops", 0, "modes: stop a run after this many operations (0: only --duration)")
	fs.StringVar(&f.accounts, "accounts", "", "comma-separated account counts to sweep (default: modes 1,10000; relay 1000; transfers, batch 10000)")
	fs.StringVar(&f.modes, "modes", "", "comma-separated concurrency modes: optimistic, lock (default both; with --target the server's mode, one value, only a label: default optimistic)")
	fs.StringVar(&f.groupCommit, "group-commit", "", "comma-separated group commit settings: true, false (default both; with --target the server's setting, one value, only a label: default true)")
	fs.StringVar(&f.mix, "mix", "", "operation mix, e.g. deposit=70,withdrawal=10,transfer=15,hold=5 (a hold is placed, then captured or voided); default: from --withdraw-every")
	fs.IntVar(&f.partitions, "partitions", 16, "partition count (with --target: the server's)")
	fs.IntVar(&f.maxBatch, "max-batch", 64, "largest group commit")
	fs.IntVar(&f.withdrawEvery, "withdraw-every", 10, "without --mix: one operation in this many is a withdrawal, the others deposits (0: deposits only)")
	fs.Int64Var(&f.seed, "seed-balance", 1_000_000, "amount deposited into every account during setup, so that withdrawals do not run dry")
	fs.StringVar(&f.prefix, "prefix", "bench", "key prefix and start of account IDs; each run appends a run ID and its number")
	fs.BoolVar(&f.cleanup, "cleanup", true, "delete each run's keys when it is done")
	fs.IntVar(&f.checkSample, "check-sample", 100, "with --target: accounts per run whose events are replayed over HTTP and compared with their snapshot")
	fs.DurationVar(&f.ceilingDuration, "ceiling-duration", 3*time.Second, "how long the raw commit ceiling of the data Redis is measured (0: skip)")
	fs.IntVar(&f.ceilingConns, "ceiling-conns", 64, "connections the raw commit ceiling is measured from")
	fs.StringVar(&f.jsonOut, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&f.csvOut, "csv", "", "also write the results as CSV to this file")
	fs.StringVar(&f.svgOut, "svg", "", "also draw throughput and p99 against accounts, a line per mode, as SVG to this file")
	fs.IntVar(&f.rate, "rate", 5000, "relay: steady ledger write rate in operations/s")
	fs.IntVar(&f.backlog, "backlog", 50_000, "relay: operations written before the relay starts, to measure its throughput on a backlog")
	fs.DurationVar(&f.pollInterval, "poll-interval", outbox.DefaultPollInterval, "relay: wait after a read found nothing new")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", time.Minute, "relay: longest wait for the relay to deliver everything written")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the lock and relay: debug | info | warn | error")
	hf := registerHTTPBenchFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if hf.handles(f.scenario) {
		return runHTTPBench(ctx, &f, hf, stdout, stderr)
	}
	if err := f.validate(); err != nil {
		return err
	}
	if f.scenario == "relay" {
		return runRelayBench(ctx, f, stdout, stderr)
	}
	return runLoadBench(ctx, f, hf, stdout, stderr)
}

func (f *benchFlags) validate() error {
	switch {
	case f.scenario != "modes" && f.scenario != "relay":
		return fmt.Errorf("--scenario must be modes, relay, transfers or batch, got %q", f.scenario)
	case f.workers < 1:
		return errors.New("--workers must be positive")
	case f.duration <= 0:
		return errors.New("--duration must be positive")
	case f.ops < 0 || f.backlog < 0 || f.withdrawEvery < 0 || f.seed < 0 || f.ceilingDuration < 0 || f.checkSample < 0:
		return errors.New("--ops, --backlog, --withdraw-every, --seed-balance, --ceiling-duration and --check-sample must not be negative")
	case f.scenario == "relay" && f.rate < 1:
		return errors.New("--rate must be positive")
	case f.drainTimeout <= 0:
		return errors.New("--drain-timeout must be positive")
	case f.prefix == "" || strings.ContainsAny(f.prefix, "{}:*?[]"):
		return errors.New("--prefix must be non-empty and must not contain any of {}:*?[]")
	}
	return f.redis.check(true)
}

// runLoadBench wires the flags into a bench.Config, runs it and writes the requested files.
func runLoadBench(ctx context.Context, f benchFlags, hf *httpBenchFlags, stdout, stderr io.Writer) error {
	cfg := bench.Config{
		Target: hf.target, APIKey: hf.apiKey, HTTPTimeout: hf.timeout,
		Workers: f.workers, Duration: f.duration, Ops: f.ops, Partitions: f.partitions, MaxBatch: f.maxBatch,
		SeedBalance: f.seed, Prefix: f.prefix, KeepKeys: !f.cleanup, CheckSample: f.checkSample,
		CeilingDuration: f.ceilingDuration, CeilingConns: f.ceilingConns, Out: stdout,
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
	if cfg.Target != "" && (len(cfg.Modes) > 1 || len(cfg.GroupCommit) > 1) {
		return errors.New("--modes and --group-commit: with --target bench cannot change the server's settings; give at most one value each (a label for the results)")
	}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		cfg.Progress = stderr
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}

	embedded := f.redis.addr == "" && f.redis.cluster == ""
	if cfg.Target == "" || !embedded {
		// The embedded Redis is expected here: its NOT DURABLE warning would only alarm.
		connectLog := log
		if embedded {
			connectLog = slog.New(slog.DiscardHandler)
		}
		rdb, closeRedis, err := f.redis.connect(ctx, connectLog, true)
		if err != nil {
			return err
		}
		defer closeRedis()
		cfg.Redis = rdb
		switch {
		case embedded:
			fmt.Fprintln(stdout, "Redis: embedded, in this process (in-memory, single-threaded Lua in Go): numbers are not comparable with a real redis-server's; give --redis for those.")
		case f.redis.addr != "":
			fmt.Fprintf(stdout, "Redis: %s.\n", f.redis.addr)
		default:
			fmt.Fprintf(stdout, "Redis Cluster: %s.\n", f.redis.cluster)
		}
	}
	if cfg.Target == "" && (len(cfg.Modes) == 0 || slices.Contains(cfg.Modes, ledger.ModeLock)) {
		waits := bench.NewLeaseWaits()
		locker, closeLocker, err := f.lock.newLocker(cfg.Redis, log, lock.Hooks{Acquired: waits.Acquired}, f.lock.ttl)
		if err != nil {
			return err
		}
		defer closeLocker()
		cfg.Locker, cfg.LeaseWaits = locker, waits
		masters := splitList(f.lock.masters)
		for _, a := range masters {
			m := redis.NewClient(lock.MasterOptions(a))
			defer m.Close()
			cfg.LockMasters = append(cfg.LockMasters, m)
		}
		fmt.Fprintf(stdout, "Lock mode: %d master(s), quorum %d.\n", max(len(masters), 1), locker.Quorum())
	}

	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
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
	if !rep.OK() {
		failed := 0
		for _, r := range rep.Runs {
			if !r.Correct {
				failed++
			}
		}
		return fmt.Errorf("bench: %d of %d runs failed their correctness check", failed, len(rep.Runs))
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
