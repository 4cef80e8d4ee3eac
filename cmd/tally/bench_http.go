package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/term"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// httpBenchFlags are the flags of the HTTP scenarios (the rest comes from benchFlags:
// --accounts, --duration, --partitions, --seed-balance, --redis).
type httpBenchFlags struct {
	target        string
	clients       int
	placement     string
	batchAtomic   bool
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
	fs.StringVar(&h.target, "target", "", "base URL of a running tally serve to load over HTTP, e.g. http://127.0.0.1:8080, or several comma-separated replicas of one deployment, used in turn (--redis is then optional: given, it must be the server's data Redis; bench measures its ceiling and runs tally verify on it)")
	fs.IntVar(&h.clients, "clients", 64, "transfers, batch: concurrent HTTP clients, each with its own keep-alive connection")
	fs.StringVar(&h.placement, "placement", "same,cross", "transfers: comma-separated placements: same (both accounts share a placement tag: one script) | cross (different partitions: the saga)")
	fs.IntVar(&h.groupSize, "group-size", 10, "transfers, placement same; batch with --batch-atomic: accounts per placement tag")
	fs.BoolVar(&h.batchAtomic, "batch-atomic", false, "batch: each request is an atomic batch on the accounts of one placement tag (one script call), not a non-atomic batch on random accounts")
	fs.IntVar(&h.batchSize, "batch-size", 100, "batch: deposits per request (1..1000)")
	fs.StringVar(&h.apiKey, "api-key", "", "transfers, batch: API key sent as Authorization: Bearer")
	fs.StringVar(&h.label, "label", "", "transfers, batch: text for the table's label column (e.g. the server's --concurrency)")
	fs.DurationVar(&h.timeout, "http-timeout", 60*time.Second, "transfers, batch: deadline of one HTTP request")
	fs.DurationVar(&h.settleTimeout, "settle-timeout", 30*time.Second, "transfers: longest wait for 202 (pending) transfers to finish before the check")
	return h
}

// handles reports whether scenario is one of the HTTP scenarios.
func (h *httpBenchFlags) handles(scenario string) bool {
	return scenario == bench.ScenarioTransfers || scenario == bench.ScenarioBatch
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

// runHTTPBench wires the flags into a bench.HTTPConfig and runs the transfers or batch
// scenario against --target (--redis, optional, being the server's data Redis).
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
	cfg := bench.HTTPConfig{
		Target: h.target, Scenario: f.scenario, Accounts: counts, Placements: splitList(h.placement),
		Clients: h.clients, GroupSize: h.groupSize, BatchSize: h.batchSize, AtomicBatch: h.batchAtomic, APIKey: h.apiKey, Label: h.label,
		Timeout: h.timeout, SettleTimeout: h.settleTimeout, Duration: f.duration, SeedBalance: f.seed,
		Partitions: f.partitions, Out: stdout,
	}
	if f.redis.addr != "" || f.redis.cluster != "" {
		rdb, closeRedis, err := f.redis.connect(ctx, log, false)
		if err != nil {
			return err
		}
		defer closeRedis()
		cfg.Redis = rdb
		for _, a := range splitList(f.lock.masters) {
			m := redis.NewClient(lock.MasterOptions(a))
			defer m.Close()
			cfg.LockMasters = append(cfg.LockMasters, m)
		}
	}
	if fh, ok := stderr.(*os.File); ok && term.IsTerminal(int(fh.Fd())) {
		cfg.Progress = stderr
	}
	return bench.RunHTTP(ctx, cfg)
}
