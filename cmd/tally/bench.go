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
	fs.StringVar(&f.scenario, "scenario", "modes", "modes (concurrency modes × group commit × account counts) | relay (outbox relay throughput and lag) | transfers, batch (HTTP load on a running serve at --target)")
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
	hf := registerHTTPBenchFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if hf.handles(f.scenario) {
		return runHTTPBench(ctx, &f, hf, stdout, stderr)
	}
	if err := f.redis.check(false); err != nil {
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
