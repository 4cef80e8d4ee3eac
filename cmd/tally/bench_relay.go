package main

import (
	"context"
	"io"
	"os"

	"github.com/redis/go-redis/v9"
	"golang.org/x/term"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// runRelayBench wires the flags into a bench.RelayConfig and runs the relay scenario on
// the data Redis (embedded by default), its leases over the --lock-redis masters.
func runRelayBench(ctx context.Context, f benchFlags, stdout, stderr io.Writer) error {
	counts, err := parseCounts(f.accounts, "1000")
	if err != nil {
		return err
	}
	if len(counts) != 1 {
		return errBenchRelayAccounts
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	rdb, closeRedis, err := f.redis.connect(ctx, log, true)
	if err != nil {
		return err
	}
	defer closeRedis()
	cfg := bench.RelayConfig{
		Redis: rdb, Accounts: counts[0], Partitions: f.partitions, MaxBatch: f.maxBatch, Workers: f.workers,
		WithdrawEvery: f.withdrawEvery, SeedBalance: f.seed, Backlog: f.backlog, Rate: f.rate, Duration: f.duration,
		PollInterval: f.pollInterval, DrainTimeout: f.drainTimeout, Prefix: f.prefix, KeepKeys: !f.cleanup,
		Logger: log, Out: stdout,
		NewLeaser: func() (outbox.Leaser, func(), error) {
			return f.lock.newLocker(rdb, log, lock.Hooks{}, f.lock.ttl)
		},
	}
	if f.backlog == 0 {
		cfg.Backlog = -1
	}
	for _, a := range splitList(f.lock.masters) {
		m := redis.NewClient(lock.MasterOptions(a))
		defer m.Close()
		cfg.LockMasters = append(cfg.LockMasters, m)
	}
	if fh, ok := stderr.(*os.File); ok && term.IsTerminal(int(fh.Fd())) {
		cfg.Progress = stderr
	}
	return bench.RunRelay(ctx, cfg)
}
