package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
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
	"github.com/tally-ledger/tally/outbox"
)

// benchFlags configure `tally bench`.
type benchFlags struct {
	redis         redisFlags
	lock          lockFlags
	scenario      string
	workers       int
	duration      time.Duration
	ops           int64
	accounts      string
	modes         string
	groupCommit   string
	partitions    int
	maxBatch      int
	withdrawEvery int
	seed          int64
	prefix        string
	cleanup       bool
	rate          int
	backlog       int
	pollInterval  time.Duration
	drainTimeout  time.Duration
	logLevel      string
}

// runBench measures the write path (scenario "modes") or the outbox relay (scenario
// "relay") against a real Redis, through the library (no HTTP), and prints markdown
// tables to stdout. Each scenario writes under a fresh key prefix and, with --cleanup,
// deletes its keys afterwards. It returns an error for invalid flags, an unreachable
// Redis, a failed setup or (relay) an exactly-once check that does not hold; errors of
// individual operations are counted and reported, not returned.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f benchFlags
	fs := newFlagSet("bench", stderr)
	f.redis.register(fs)
	f.lock.register(fs)
	fs.StringVar(&f.scenario, "scenario", "modes", "modes (concurrency modes × group commit × account counts) | relay (outbox relay throughput and lag)")
	fs.IntVar(&f.workers, "workers", 64, "concurrent writers")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "measured time per scenario (relay: the steady-rate phase)")
	fs.Int64Var(&f.ops, "ops", 0, "modes: stop a scenario after this many operations (0: only --duration)")
	fs.StringVar(&f.accounts, "accounts", "", "comma-separated account counts (default: modes 1,10000; relay 1000)")
	fs.StringVar(&f.modes, "modes", "optimistic,lock", "comma-separated concurrency modes to compare")
	fs.StringVar(&f.groupCommit, "group-commit", "on,off", "comma-separated group commit settings to compare (on, off)")
	fs.IntVar(&f.partitions, "partitions", 16, "partition count")
	fs.IntVar(&f.maxBatch, "max-batch", 64, "largest group commit")
	fs.IntVar(&f.withdrawEvery, "withdraw-every", 10, "one operation in this many is a withdrawal, the others deposits (0: deposits only)")
	fs.Int64Var(&f.seed, "seed-balance", 1_000_000, "amount deposited into every account during setup, so that withdrawals do not run dry")
	fs.StringVar(&f.prefix, "prefix", "bench", "key prefix; each scenario appends a run ID and its number")
	fs.BoolVar(&f.cleanup, "cleanup", true, "delete each scenario's keys when it is done")
	fs.IntVar(&f.rate, "rate", 5000, "relay: steady ledger write rate in operations/s")
	fs.IntVar(&f.backlog, "backlog", 50_000, "relay: operations written before the relay starts, to measure its throughput on a backlog")
	fs.DurationVar(&f.pollInterval, "poll-interval", outbox.DefaultPollInterval, "relay: wait after a read found nothing new")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", time.Minute, "relay: longest wait for the relay to deliver everything written")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level of the lock and relay: debug | info | warn | error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	rdb, closeRedis, err := f.redis.connect(ctx, log, false)
	if err != nil {
		return err
	}
	defer closeRedis()

	b := &bench{f: f, rdb: rdb, log: log, stdout: stdout, stderr: stderr, runID: newRunID()}
	switch f.scenario {
	case "modes":
		return b.runModes(ctx)
	default:
		return b.runRelay(ctx)
	}
}

func (f *benchFlags) validate() error {
	switch {
	case f.scenario != "modes" && f.scenario != "relay":
		return fmt.Errorf("--scenario must be modes or relay, got %q", f.scenario)
	case f.workers < 1:
		return errors.New("--workers must be positive")
	case f.duration <= 0:
		return errors.New("--duration must be positive")
	case f.ops < 0 || f.backlog < 0 || f.withdrawEvery < 0 || f.seed < 0:
		return errors.New("--ops, --backlog, --withdraw-every and --seed-balance must not be negative")
	case f.scenario == "relay" && f.rate < 1:
		return errors.New("--rate must be positive")
	case f.drainTimeout <= 0:
		return errors.New("--drain-timeout must be positive")
	case f.prefix == "" || strings.ContainsAny(f.prefix, "{}:*?[]"):
		return errors.New("--prefix must be non-empty and must not contain any of {}:*?[]")
	}
	return nil
}

// bench holds what every scenario of one run shares.
type bench struct {
	f              benchFlags
	rdb            redis.UniversalClient
	log            *slog.Logger
	stdout, stderr io.Writer
	runID          string
	n              int // scenarios started, numbers their prefixes

	waits   waitRecorder    // lease waits reported by the Locker's Acquired hook
	masters []*redis.Client // --lock-redis masters, for INFO only
}

// newRunID returns a short random ID that keeps this run's keys and account IDs apart from
// every other run's (and from real accounts on shared lock masters).
func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// nextPrefix returns a fresh key prefix for the next scenario.
func (b *bench) nextPrefix() string {
	b.n++
	return fmt.Sprintf("%s-%s-%d", b.f.prefix, b.runID, b.n)
}

// accountIDs returns n account IDs unique to this run.
func (b *bench) accountIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("bench.%s.%d", b.runID, i)
	}
	return out
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.stderr, "bench: "+format+"\n", args...)
}

// locker returns a Locker over the --lock-redis masters (the data Redis by default) whose
// lease waits go to b.waits, and the number of masters.
func (b *bench) locker() (*lock.Locker, int, func(), error) {
	hooks := lock.Hooks{Acquired: func(_ string, wait time.Duration) { b.waits.add(wait) }}
	l, closeFn, err := b.f.lock.newLocker(b.rdb, b.log, hooks, b.f.lock.ttl)
	if err != nil {
		return nil, 0, nil, err
	}
	addrs := splitList(b.f.lock.masters)
	for _, a := range addrs {
		b.masters = append(b.masters, redis.NewClient(lock.MasterOptions(a)))
	}
	closeAll := func() {
		for _, m := range b.masters {
			m.Close()
		}
		b.masters = nil
		closeFn()
	}
	return l, max(len(addrs), 1), closeAll, nil
}

// waitRecorder collects lease waits (local queue plus acquisition).
type waitRecorder struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (w *waitRecorder) add(d time.Duration) {
	w.mu.Lock()
	w.waits = append(w.waits, d)
	w.mu.Unlock()
}

// take returns the waits recorded since the last take, sorted.
func (w *waitRecorder) take() []time.Duration {
	w.mu.Lock()
	out := w.waits
	w.waits = nil
	w.mu.Unlock()
	slices.Sort(out)
	return out
}

// commandCount returns how many commands Redis executed, summed over the data Redis (every
// master of a Cluster) and, separately, over the --lock-redis masters, from INFO
// commandstats. Commands that scripts run are included; INFO and PING are not.
func (b *bench) commandCount(ctx context.Context) (data, masters int64, err error) {
	var mu sync.Mutex
	count := func(ctx context.Context, c *redis.Client, into *int64) error {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		n := commandCalls(info)
		mu.Lock()
		*into += n
		mu.Unlock()
		return nil
	}
	switch c := b.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return count(ctx, m, &data) })
	case *redis.Client:
		err = count(ctx, c, &data)
	}
	for _, m := range b.masters {
		if err == nil {
			err = count(ctx, m, &masters)
		}
	}
	return data, masters, err
}

// commandCalls sums the calls of an INFO commandstats reply, except INFO and PING.
func commandCalls(info string) int64 {
	var n int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok || name == "cmdstat_info" || name == "cmdstat_ping" {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		if v, err := strconv.ParseInt(calls, 10, 64); err == nil {
			n += v
		}
	}
	return n
}

// cleanupPrefix deletes every key under prefix (on every master of a Cluster).
func (b *bench) cleanupPrefix(ctx context.Context, prefix string) {
	if !b.f.cleanup {
		return
	}
	del := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		flush := func() error {
			if len(keys) == 0 {
				return nil
			}
			pipe := c.Pipeline()
			for _, k := range keys {
				pipe.Unlink(ctx, k)
			}
			keys = keys[:0]
			_, err := pipe.Exec(ctx)
			return err
		}
		for iter.Next(ctx) {
			if keys = append(keys, iter.Val()); len(keys) == 1000 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return flush()
	}
	var err error
	switch c := b.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, del)
	case *redis.Client:
		err = del(ctx, c)
	}
	if err != nil {
		b.progress("cleanup of %s failed (keys stay): %v", prefix, err)
	}
}

// load issues deposits and withdrawals against a set of accounts through one Ledger.
type load struct {
	l             *ledger.Ledger
	accounts      []string
	withdrawEvery int
}

// setup opens every account and deposits seed into it, from workers goroutines. It returns
// the first error.
func (ld *load) setup(ctx context.Context, workers int, seed int64) error {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range min(workers, len(ld.accounts)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(ld.accounts) || ctx.Err() != nil {
					return
				}
				id := ld.accounts[i]
				_, err := ld.l.OpenAccount(ctx, ledger.OpenAccount{ID: id}, ledger.WriteOptions{})
				if err == nil && seed > 0 {
					_, err = ld.l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: seed}, ledger.WriteOptions{})
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("setup of account %s: %w", id, err)
					}
					mu.Unlock()
					return
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

// op performs one write on a random account: a withdrawal of 1 in one of withdrawEvery
// operations, otherwise a deposit of 1..100.
func (ld *load) op(ctx context.Context) error {
	a := ld.accounts[mrand.IntN(len(ld.accounts))]
	if ld.withdrawEvery > 0 && mrand.IntN(ld.withdrawEvery) == 0 {
		_, err := ld.l.Withdraw(ctx, ledger.Withdraw{Account: a, Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		return err
	}
	_, err := ld.l.Deposit(ctx, ledger.Deposit{Account: a, Currency: "USD", Amount: 1 + mrand.Int64N(100)}, ledger.WriteOptions{})
	return err
}

// run starts workers goroutines that each call op for as long as next returns true, and
// returns their merged outcomes once all have stopped.
func (ld *load) run(ctx context.Context, workers int, next func() bool) outcomes {
	results := make([]outcomes, workers)
	var wg sync.WaitGroup
	for w := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &results[w]
			for next() {
				start := time.Now()
				err := ld.op(ctx)
				o.record(err, time.Since(start))
			}
		}()
	}
	wg.Wait()
	var all outcomes
	for i := range results {
		all.merge(&results[i])
	}
	return all
}

// outcomes counts what the operations of a load answered.
type outcomes struct {
	ok       int64            // committed
	rejected int64            // answered with a domain error (insufficient funds)
	errs     map[string]int64 // failed, by kind
	lat      []time.Duration  // latency of every answered operation
}

func (o *outcomes) record(err error, d time.Duration) {
	switch {
	case err == nil:
		o.ok++
	case errors.Is(err, ledger.ErrInsufficientFunds):
		o.rejected++
	default:
		if o.errs == nil {
			o.errs = map[string]int64{}
		}
		o.errs[errKind(err)]++
		return
	}
	o.lat = append(o.lat, d)
}

func (o *outcomes) merge(x *outcomes) {
	o.ok += x.ok
	o.rejected += x.rejected
	for k, v := range x.errs {
		if o.errs == nil {
			o.errs = map[string]int64{}
		}
		o.errs[k] += v
	}
	o.lat = append(o.lat, x.lat...)
}

func (o *outcomes) answered() int64 { return o.ok + o.rejected }

func (o *outcomes) errors() int64 {
	var n int64
	for _, v := range o.errs {
		n += v
	}
	return n
}

// errSummary returns "kind=n, ..." in kind order, or "" without errors.
func (o *outcomes) errSummary() string {
	kinds := make([]string, 0, len(o.errs))
	for k := range o.errs {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s=%d", k, o.errs[k])
	}
	return strings.Join(parts, ", ")
}

// errKind names the kind of a failed operation.
func errKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{ledger.ErrVersionConflict, "version_conflict"},
		{ledger.ErrLockUnavailable, "lock_unavailable"},
		{ledger.ErrStoreUnavailable, "store_unavailable"},
		{context.Canceled, "canceled"},
		{context.DeadlineExceeded, "deadline_exceeded"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other: " + err.Error()
}

// percentile returns the q-quantile (0..1, nearest rank) of sorted, or 0 when it is empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

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

// lagSink is the relay scenario's consumer: it applies every message through a Dedup whose
// effect increments a per-partition counter, and records the end-to-end lag (time of
// application minus Event.Time) of every first application of an event written at or
// after since.
type lagSink struct {
	d   *outbox.Dedup
	eff *outbox.Effect

	since atomic.Int64 // UnixNano; events before it do not count toward the lag
	first atomic.Int64 // UnixNano of the first delivery
	last  atomic.Int64 // UnixNano of the latest application

	mu         sync.Mutex
	applied    int64
	duplicates int64
	lag        []time.Duration
}

func newLagSink(d *outbox.Dedup) *lagSink {
	return &lagSink{d: d, eff: outbox.NewEffect(`return redis.call('INCR', KEYS[1])`)}
}

// effectsKey is the counter of partition p the effect increments.
func (s *lagSink) effectsKey(p int) string { return s.d.Key(p, "effects") }

// Deliver applies msgs, one Dedup script call per partition, and returns its error.
func (s *lagSink) Deliver(ctx context.Context, msgs []outbox.Message) error {
	s.first.CompareAndSwap(0, time.Now().UnixNano())
	for len(msgs) > 0 {
		p, n := msgs[0].Partition, 1
		for n < len(msgs) && msgs[n].Partition == p {
			n++
		}
		batch := msgs[:n]
		msgs = msgs[n:]
		ops := make([]outbox.Op, len(batch))
		for i, m := range batch {
			ops[i] = outbox.Op{Msg: m, Keys: []string{s.effectsKey(p)}}
		}
		out, err := s.d.ApplyBatch(ctx, s.eff, ops)
		if err != nil {
			return err
		}
		now := time.Now()
		since := time.Unix(0, s.since.Load())
		s.mu.Lock()
		for i, o := range out {
			if o != outbox.Applied {
				s.duplicates++
				continue
			}
			s.applied++
			if t := batch[i].Event.Time; s.since.Load() != 0 && !t.Before(since) {
				s.lag = append(s.lag, now.Sub(t))
			}
		}
		s.mu.Unlock()
		s.last.Store(now.UnixNano())
	}
	return nil
}

// effects returns the sum of the effect counters of partitions 0..partitions-1.
func (s *lagSink) effects(ctx context.Context, rdb redis.UniversalClient, partitions int) (int64, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.StringCmd, partitions)
	for p := range cmds {
		cmds[p] = pipe.Get(ctx, s.effectsKey(p))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	var n int64
	for _, c := range cmds {
		v, err := c.Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, err
		}
		n += v
	}
	return n, nil
}

// waitEffects polls until the effect counters reach want, ctx ends or timeout passes.
func (b *bench) waitEffects(ctx context.Context, s *lagSink, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		got, err := s.effects(ctx, b.rdb, b.f.partitions)
		switch {
		case err != nil:
			return err
		case got == want:
			return nil
		case got > want:
			return fmt.Errorf("%d effects for %d events: some event took effect twice", got, want)
		case time.Now().After(deadline):
			return fmt.Errorf("relay delivered %d of %d events within %v", got, want, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// pace sends rate tokens per second on jobs for d (catching up after a stall), then
// closes jobs.
func pace(ctx context.Context, rate int, d time.Duration, jobs chan<- struct{}) {
	defer close(jobs)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	start := time.Now()
	var issued int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		el := min(time.Since(start), d)
		for due := int64(float64(rate) * el.Seconds()); issued < due; issued++ {
			select {
			case jobs <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
		if el >= d {
			return
		}
	}
}

// runRelay measures the outbox relay on ledger-written events: first its throughput on a
// backlog (setup events plus --backlog operations written before it starts), then the
// end-to-end lag while the ledger writes at a steady --rate for --duration. It checks
// that every event took effect exactly once.
func (b *bench) runRelay(ctx context.Context) error {
	counts, err := parseCounts(b.f.accounts, "1000")
	if err != nil {
		return err
	}
	if len(counts) != 1 {
		return errors.New("--accounts: the relay scenario takes one account count")
	}
	locker, masters, closeLocker, err := b.locker()
	if err != nil {
		return err
	}
	defer closeLocker()
	prefix := b.nextPrefix()
	defer b.cleanupPrefix(context.WithoutCancel(ctx), prefix)
	l, err := ledger.Open(ctx, b.rdb, ledger.Config{Prefix: prefix, Partitions: b.f.partitions, MaxBatch: b.f.maxBatch})
	if err != nil {
		return err
	}
	ld := &load{l: l, accounts: b.accountIDs(counts[0]), withdrawEvery: b.f.withdrawEvery}
	b.progress("relay: opening %d accounts (prefix %s)", len(ld.accounts), prefix)
	if err := ld.setup(ctx, b.f.workers, b.f.seed); err != nil {
		return err
	}
	b.progress("relay: writing a backlog of %d operations", b.f.backlog)
	var issued atomic.Int64
	backlog := ld.run(ctx, b.f.workers, func() bool { return ctx.Err() == nil && issued.Add(1) <= int64(b.f.backlog) })
	if n := backlog.errors(); n > 0 {
		return fmt.Errorf("backlog: %d writes failed: %s", n, backlog.errSummary())
	}

	d, err := outbox.NewDedup(b.rdb, outbox.DedupConfig{Prefix: prefix, Name: "bench"})
	if err != nil {
		return err
	}
	sink := newLagSink(d)
	relay, err := outbox.NewRelay(b.rdb, locker, outbox.Config{
		Prefix: prefix, Partitions: b.f.partitions, Group: "bench", Owner: "bench-" + b.runID,
		Sinks: []outbox.Sink{sink}, PollInterval: b.f.pollInterval, Logger: b.log,
	})
	if err != nil {
		return err
	}
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()
	stop := sync.OnceValue(func() error { stopRelay(); return <-relayDone })
	defer stop()

	drained := l.Stats().Operations
	b.progress("relay: delivering the backlog of %d events", drained)
	if err := b.waitEffects(ctx, sink, drained, b.f.drainTimeout); err != nil {
		return fmt.Errorf("backlog delivery: %w", err)
	}
	drainTime := time.Duration(sink.last.Load() - sink.first.Load())

	b.progress("relay: writing %d operations/s for %v", b.f.rate, b.f.duration)
	steadyStart := time.Now()
	sink.since.Store(steadyStart.UnixNano())
	jobs := make(chan struct{}, b.f.workers)
	paced := make(chan struct{})
	go func() { defer close(paced); pace(ctx, b.f.rate, b.f.duration, jobs) }()
	steady := ld.run(ctx, b.f.workers, func() bool { _, ok := <-jobs; return ok })
	<-paced
	writeEnd := time.Now()
	total := l.Stats().Operations
	if err := b.waitEffects(ctx, sink, total, b.f.drainTimeout); err != nil {
		return fmt.Errorf("steady delivery: %w", err)
	}
	tail := max(0, time.Unix(0, sink.last.Load()).Sub(writeEnd))
	if err := stop(); err != nil {
		return fmt.Errorf("relay: %w", err)
	}

	b.progress("relay: checking watermarks of %d accounts", len(ld.accounts))
	exact, err := b.checkWatermarks(ctx, l, d, ld.accounts)
	if err != nil {
		return err
	}
	effects, err := sink.effects(ctx, b.rdb, b.f.partitions)
	if err != nil {
		return err
	}

	sink.mu.Lock()
	lag, applied, dups := sink.lag, sink.applied, sink.duplicates
	sink.mu.Unlock()
	slices.Sort(lag)
	slices.Sort(steady.lat)
	writeSecs := writeEnd.Sub(steadyStart).Seconds()

	fmt.Fprintf(b.stdout, "Relay: %d accounts, %d partitions, ledger optimistic with group commit, %d writers, 1 withdrawal in %d; "+
		"relay leases over %d lock master(s), poll interval %v; sink: Dedup with an INCR effect; GOMAXPROCS %d, %s.\n\n",
		len(ld.accounts), b.f.partitions, b.f.workers, b.f.withdrawEvery, masters, b.f.pollInterval, runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintln(b.stdout, "| measure | value |")
	fmt.Fprintln(b.stdout, "|---|---|")
	fmt.Fprintf(b.stdout, "| backlog delivered (events) | %d in %.3f s |\n", drained, drainTime.Seconds())
	fmt.Fprintf(b.stdout, "| relay throughput (events/s) | %.0f |\n", float64(drained)/max(drainTime.Seconds(), 1e-9))
	fmt.Fprintf(b.stdout, "| steady write rate, target / achieved (ops/s) | %d / %.0f |\n", b.f.rate, float64(steady.answered())/writeSecs)
	fmt.Fprintf(b.stdout, "| write errors | %d |\n", steady.errors())
	fmt.Fprintf(b.stdout, "| write latency p50 / p99 (ms) | %s / %s |\n", ms(percentile(steady.lat, 0.5)), ms(percentile(steady.lat, 0.99)))
	fmt.Fprintf(b.stdout, "| events delivered in the steady phase | %d (%.0f events/s) |\n", total-drained, float64(total-drained)/writeSecs)
	fmt.Fprintf(b.stdout, "| end-to-end lag p50 / p95 / p99 / max (ms) | %s / %s / %s / %s |\n",
		ms(percentile(lag, 0.5)), ms(percentile(lag, 0.95)), ms(percentile(lag, 0.99)), ms(percentile(lag, 1)))
	fmt.Fprintf(b.stdout, "| last event applied after writes stopped (ms) | %s |\n", ms(tail))
	fmt.Fprintf(b.stdout, "| duplicates seen by dedup | %d |\n", dups)
	verdict := "yes"
	if !exact || effects != total || applied != total {
		verdict = "NO"
	}
	fmt.Fprintf(b.stdout, "| exactly once in effect | %s: %d events committed, %d effects, %d applied; watermark = version on %d accounts: %v |\n",
		verdict, total, effects, applied, len(ld.accounts), exact)
	if steady.errors() > 0 {
		fmt.Fprintf(b.stdout, "\nWrite errors by kind: %s\n", steady.errSummary())
	}
	if verdict != "yes" {
		return errors.New("relay: events did not take effect exactly once")
	}
	return ctx.Err()
}

// checkWatermarks reports whether the consumer's watermark of every account equals the
// account's version: every event, the last included, was applied.
func (b *bench) checkWatermarks(ctx context.Context, l *ledger.Ledger, d *outbox.Dedup, accounts []string) (bool, error) {
	for _, a := range accounts {
		acc, err := l.Account(ctx, a)
		if err != nil {
			return false, err
		}
		wm, err := d.Watermark(ctx, l.Partition(a), a)
		if err != nil {
			return false, err
		}
		if wm != acc.Version {
			b.progress("relay: account %s is at version %d, its watermark at %d", a, acc.Version, wm)
			return false, nil
		}
	}
	return true, nil
}
