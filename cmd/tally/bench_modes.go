package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// modeScenario is one row of the modes table.
type modeScenario struct {
	mode        ledger.Mode
	groupCommit bool
	accounts    int
}

func (s modeScenario) String() string {
	return fmt.Sprintf("%s, group commit %s, %d accounts", s.mode, onOff(s.groupCommit), s.accounts)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// runModes runs every combination of --accounts, --modes and --group-commit and prints one
// table row per combination as it completes.
func (b *bench) runModes(ctx context.Context) error {
	counts, err := parseCounts(b.f.accounts, "1,10000")
	if err != nil {
		return err
	}
	var modes []ledger.Mode
	for _, m := range splitList(b.f.modes) {
		if mode := ledger.Mode(m); mode == ledger.ModeOptimistic || mode == ledger.ModeLock {
			modes = append(modes, mode)
			continue
		}
		return fmt.Errorf("--modes: unknown mode %q (optimistic, lock)", m)
	}
	var gcs []bool
	for _, g := range splitList(b.f.groupCommit) {
		v, err := parseOnOff(g)
		if err != nil {
			return fmt.Errorf("--group-commit: %w", err)
		}
		gcs = append(gcs, v)
	}
	if len(modes) == 0 || len(gcs) == 0 {
		return errors.New("--modes and --group-commit must name at least one value each")
	}

	var locker *lock.Locker
	masters := 0
	if slices.Contains(modes, ledger.ModeLock) {
		l, n, closeLocker, err := b.locker()
		if err != nil {
			return err
		}
		defer closeLocker()
		locker, masters = l, n
	}

	limit := b.f.duration.String()
	if b.f.ops > 0 {
		limit += fmt.Sprintf(" or %d operations, whichever comes first", b.f.ops)
	}
	fmt.Fprintf(b.stdout, "Workers %d, %s per scenario, %d partitions, max batch %d, 1 withdrawal in %d operations; GOMAXPROCS %d, %s",
		b.f.workers, limit, b.f.partitions, b.f.maxBatch, b.f.withdrawEvery, runtime.GOMAXPROCS(0), runtime.Version())
	if locker != nil {
		fmt.Fprintf(b.stdout, "; lock mode: %d master(s), quorum %d", masters, locker.Quorum())
	}
	fmt.Fprint(b.stdout, ".\n\n")
	fmt.Fprintln(b.stdout, "| mode | group commit | accounts | ops | ops/s | p50 ms | p99 ms | errors | conflicts | retries | lock failures | commits/op | lease wait p50 / p99 ms | data cmds/op | lock cmds/op |")
	fmt.Fprintln(b.stdout, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

	var failed []string
	for _, n := range counts {
		for _, mode := range modes {
			for _, gc := range gcs {
				s := modeScenario{mode: mode, groupCommit: gc, accounts: n}
				o, err := b.runMode(ctx, s, locker)
				if err != nil {
					return fmt.Errorf("%s: %w", s, err)
				}
				if o.errors() > 0 {
					failed = append(failed, fmt.Sprintf("- %s: %s", s, o.errSummary()))
				}
			}
		}
	}
	fmt.Fprint(b.stdout, "\nops/s counts answered operations (committed or rejected for insufficient funds) per second of the run; "+
		"latencies are per operation, as the caller sees them. Lease wait is the Locker's local queue plus acquisition. "+
		"cmds/op are the commands Redis executed (INFO commandstats, including those scripts run) per operation, "+
		"on the data Redis and summed over the --lock-redis masters (\"-\": no separate masters).\n")
	if len(failed) > 0 {
		fmt.Fprintf(b.stdout, "\nErrors by kind:\n%s\n", strings.Join(failed, "\n"))
	}
	return ctx.Err()
}

// runMode runs one scenario of the modes table and prints its row.
func (b *bench) runMode(ctx context.Context, s modeScenario, locker *lock.Locker) (outcomes, error) {
	prefix := b.nextPrefix()
	defer b.cleanupPrefix(context.WithoutCancel(ctx), prefix)
	cfg := ledger.Config{
		Prefix:             prefix,
		Partitions:         b.f.partitions,
		Mode:               s.mode,
		DisableGroupCommit: !s.groupCommit,
		MaxBatch:           b.f.maxBatch,
	}
	if s.mode == ledger.ModeLock {
		cfg.Locker = locker
	}
	l, err := ledger.Open(ctx, b.rdb, cfg)
	if err != nil {
		return outcomes{}, err
	}
	ld := &load{l: l, accounts: b.accountIDs(s.accounts), withdrawEvery: b.f.withdrawEvery}
	b.progress("%s: opening accounts (prefix %s)", s, prefix)
	if err := ld.setup(ctx, b.f.workers, b.f.seed); err != nil {
		return outcomes{}, err
	}
	b.progress("%s: running %d workers for %v", s, b.f.workers, b.f.duration)
	dataBefore, mastersBefore, err := b.commandCount(ctx)
	if err != nil {
		return outcomes{}, fmt.Errorf("INFO commandstats: %w", err)
	}
	b.waits.take()
	before := l.Stats()
	var issued atomic.Int64
	start := time.Now()
	o := ld.run(ctx, b.f.workers, func() bool {
		if ctx.Err() != nil || time.Since(start) >= b.f.duration {
			return false
		}
		return b.f.ops == 0 || issued.Add(1) <= b.f.ops
	})
	elapsed := time.Since(start)
	st := l.Stats()
	waits := b.waits.take()
	dataAfter, mastersAfter, err := b.commandCount(ctx)
	if err != nil {
		return outcomes{}, fmt.Errorf("INFO commandstats: %w", err)
	}
	slices.Sort(o.lat)
	perOp := func(n, ops int64) string {
		if ops == 0 {
			return "-"
		}
		return strconv.FormatFloat(float64(n)/float64(ops), 'f', 3, 64)
	}
	commits, committed := st.Commits-before.Commits, st.Operations-before.Operations
	wait, lockCmds := "-", "-"
	if s.mode == ledger.ModeLock {
		wait = ms(percentile(waits, 0.50)) + " / " + ms(percentile(waits, 0.99))
	}
	if len(b.masters) > 0 {
		lockCmds = perOp(mastersAfter-mastersBefore, o.answered())
	}
	fmt.Fprintf(b.stdout, "| %s | %s | %d | %d | %.0f | %s | %s | %d | %d | %d | %d | %s | %s | %s | %s |\n",
		s.mode, onOff(s.groupCommit), s.accounts, o.answered(), float64(o.answered())/elapsed.Seconds(),
		ms(percentile(o.lat, 0.50)), ms(percentile(o.lat, 0.99)), o.errors(),
		st.Conflicts-before.Conflicts, st.Retries-before.Retries, st.LockFailures-before.LockFailures,
		perOp(commits, committed), wait, perOp(dataAfter-dataBefore, o.answered()), lockCmds)
	return o, nil
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
	return false, fmt.Errorf("%q is neither on nor off", s)
}
