package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// runRelayBench wires the flags into a bench.RelayConfig, checks it before it connects to
// anything, and runs the relay scenario on the data Redis (embedded by default), its
// leases over the --lock-redis masters.
func runRelayBench(ctx context.Context, f benchFlags, log *slog.Logger, stdout, stderr io.Writer) error {
	counts, err := parseCounts(f.accounts, "1000")
	if err != nil {
		return err
	}
	if len(counts) != 1 {
		return errBenchRelayAccounts
	}
	data, err := f.redis.open(true)
	if err != nil {
		return err
	}
	defer data.close()
	cfg := bench.RelayConfig{
		Redis: data.client, Accounts: counts[0], Partitions: f.partitions, MaxBatch: f.maxBatch, Workers: f.workers,
		WithdrawEvery: f.withdrawEvery, SeedBalance: f.seed, Backlog: f.backlog, Rate: f.rate, Duration: f.duration,
		PollInterval: f.pollInterval, DrainTimeout: f.drainTimeout, Prefix: f.prefix, KeepKeys: !f.cleanup,
		Logger: log, Out: stdout, Progress: progressTo(stderr),
		NewLeaser: func() (outbox.Leaser, func(), error) {
			return f.lock.newLocker(data.client, log, lock.Hooks{}, f.lock.ttl)
		},
	}
	if f.backlog == 0 {
		cfg.Backlog = -1
	}
	var closeMasters func()
	cfg.LockMasters, closeMasters = lockMasterClients(f.lock)
	defer closeMasters()
	if err := cfg.Validate(); err != nil {
		return benchFlagError(err)
	}
	if err := data.start(ctx, log); err != nil {
		return err
	}
	return bench.RunRelay(ctx, cfg)
}
