package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"time"

	"github.com/tally-ledger/tally/bench"
)

// httpBenchFlags are the flags of the HTTP scenarios (the rest comes from benchFlags:
// --accounts, --duration, --partitions, --seed-balance, --redis); --target, --api-key and
// --http-timeout also serve the modes scenario over HTTP.
type httpBenchFlags struct {
	target        string
	spread        string
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
	fs.StringVar(&h.spread, "spread", bench.SpreadRequest, "with several --target replicas (modes scenario): request sends each request to the next replica in turn, as a per-request (L7) balancer does; worker keeps each worker on one replica, as a keep-alive connection through a connection (L4) balancer stays")
	fs.IntVar(&h.clients, "clients", bench.DefaultWorkers, "transfers, batch: concurrent HTTP clients, each with its own keep-alive connection")
	fs.StringVar(&h.placement, "placement", "same,cross", "transfers: comma-separated placements: same (both accounts share a placement tag: one script) | cross (different partitions: the saga)")
	fs.IntVar(&h.groupSize, "group-size", 10, "transfers, placement same; batch with --batch-atomic: accounts per placement tag")
	fs.BoolVar(&h.batchAtomic, "batch-atomic", false, "batch: each request is an atomic batch on the accounts of one placement tag (one script call), not a non-atomic batch on random accounts")
	fs.IntVar(&h.batchSize, "batch-size", 100, "batch: deposits per request (1..1000)")
	fs.StringVar(&h.apiKey, "api-key", "", "with --target: API key sent as Authorization: Bearer")
	fs.StringVar(&h.label, "label", "", "transfers, batch: text for the table's label column (default: the server's --concurrency, read from its /metrics)")
	fs.DurationVar(&h.timeout, "http-timeout", bench.DefaultHTTPTimeout, "with --target: deadline of one HTTP request")
	fs.DurationVar(&h.settleTimeout, "settle-timeout", 30*time.Second, "transfers: longest wait for 202 (pending) transfers to finish before the check")
	return h
}

// runHTTPBench wires the flags into a bench.HTTPConfig, checks it before it connects to
// anything, and runs the transfers or batch scenario against --target (--redis, optional,
// being the server's data Redis).
func runHTTPBench(ctx context.Context, f benchFlags, h *httpBenchFlags, log *slog.Logger, stdout, stderr io.Writer) error {
	counts, err := parseCounts(f.accounts, "10000")
	if err != nil {
		return err
	}
	cfg := bench.HTTPConfig{
		Target: h.target, Scenario: f.scenario, Accounts: counts, Placements: splitList(h.placement),
		Clients: h.clients, GroupSize: h.groupSize, BatchSize: h.batchSize, AtomicBatch: h.batchAtomic, APIKey: h.apiKey, Label: h.label,
		HTTPTimeout: h.timeout, SettleTimeout: h.settleTimeout, Duration: f.duration, SeedBalance: f.seed,
		Partitions: f.partitions, Out: stdout, Progress: progressTo(stderr),
	}
	if err := cfg.Validate(); err != nil {
		return benchFlagError(err)
	}
	if f.redis.addr != "" || f.redis.cluster != "" {
		rdb, closeRedis, err := f.redis.connect(ctx, log, false)
		if err != nil {
			return err
		}
		defer closeRedis()
		cfg.Redis = rdb
		var closeMasters func()
		cfg.LockMasters, closeMasters = lockMasterClients(f.lock)
		defer closeMasters()
	}
	return benchFlagError(bench.RunHTTP(ctx, cfg)) // a flag the server contradicts
}
