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
			if s.since.Load() == 0 {
				continue
			}
			if e, err := ledger.DecodeEvent(batch[i]); err == nil && !e.Time.Before(since) {
				s.lag = append(s.lag, now.Sub(e.Time))
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
func (b *relayBench) waitEffects(ctx context.Context, s *lagSink, want int64, timeout time.Duration) error {
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
func (b *relayBench) runRelay(ctx context.Context) error {
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
	// As in serve and relay: the relay's blocked reads get a pool of their own, apart
	// from the writers'.
	relayRDB, closeRelayRDB := relayClient(b.rdb, b.f.partitions)
	defer closeRelayRDB()
	relayConfig := func(owner string) outbox.Config {
		return outbox.Config{
			Prefix: prefix, Partitions: b.f.partitions, Group: "bench", Owner: owner,
			Sinks: []outbox.Sink{sink}, PollInterval: b.f.pollInterval, Logger: b.log,
		}
	}
	relay, err := outbox.NewRelay(relayRDB, locker, relayConfig("bench-"+b.runID))
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
	idleData, idleMasters, err := b.measureIdle(ctx, relayRDB, relayConfig)
	if err != nil {
		return fmt.Errorf("idle relays: %w", err)
	}
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
	fmt.Fprintf(b.stdout, "| idle, 3 relays of the group, no traffic: commands/s on the data Redis / lock masters | %.0f / %.0f |\n", idleData, idleMasters)
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

// idleWindow is how long the relay scenario measures the commands of idle relays.
const idleWindow = 5 * time.Second

// measureIdle starts two more relays of the running relay's group (as one serve and two
// relay processes would run), waits until the three have split the partitions, and
// returns the commands per second that the data Redis and the lock masters executed
// during idleWindow without traffic. It stops the relays it started.
func (b *relayBench) measureIdle(ctx context.Context, rdb redis.UniversalClient, config func(owner string) outbox.Config) (data, masters float64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		closers []func()
	)
	defer func() {
		cancel()
		wg.Wait()
		for _, c := range closers {
			c()
		}
	}()
	owners := map[string]bool{config("bench-" + b.runID).Owner: true}
	for i := 2; i <= 3; i++ {
		l, closeLocker, err := b.f.lock.newLocker(b.rdb, b.log, lock.Hooks{}, b.f.lock.ttl)
		if err != nil {
			return 0, 0, err
		}
		closers = append(closers, closeLocker)
		cfg := config(fmt.Sprintf("bench-%s-%d", b.runID, i))
		owners[cfg.Owner] = true
		r, err := outbox.NewRelay(rdb, l, cfg)
		if err != nil {
			return 0, 0, err
		}
		wg.Go(func() { _ = r.Run(ctx) })
	}
	admin, err := outbox.NewAdmin(b.rdb, outbox.AdminConfig{Prefix: config("").Prefix, Partitions: b.f.partitions, Group: config("").Group})
	if err != nil {
		return 0, 0, err
	}
	b.progress("relay: waiting for 3 relays to split the partitions, then counting their commands for %v", idleWindow)
	deadline := time.Now().Add(time.Minute)
	for {
		sts, err := admin.Status(ctx)
		if err != nil {
			return 0, 0, err
		}
		share := (b.f.partitions + len(owners) - 1) / len(owners)
		held := map[string]int{}
		for _, st := range sts {
			if owners[st.Owner] {
				held[st.Owner]++
			}
		}
		total, balanced := 0, true
		for _, n := range held {
			total += n
			balanced = balanced && n <= share
		}
		balanced = balanced && total == b.f.partitions
		if balanced {
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, errors.New("the relays did not split the partitions within a minute")
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	dataBefore, mastersBefore, err := b.commandCount(ctx)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	case <-time.After(idleWindow):
	}
	dataAfter, mastersAfter, err := b.commandCount(ctx)
	if err != nil {
		return 0, 0, err
	}
	secs := time.Since(start).Seconds()
	return float64(dataAfter-dataBefore) / secs, float64(mastersAfter-mastersBefore) / secs, nil
}

// checkWatermarks reports whether the consumer's watermark of every account equals the
// account's version: every event, the last included, was applied.
func (b *relayBench) checkWatermarks(ctx context.Context, l *ledger.Ledger, d *outbox.Dedup, accounts []string) (bool, error) {
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

// bench holds what every scenario of one run shares.
type relayBench struct {
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
func (b *relayBench) nextPrefix() string {
	b.n++
	return fmt.Sprintf("%s-%s-%d", b.f.prefix, b.runID, b.n)
}

// accountIDs returns n account IDs unique to this run.
func (b *relayBench) accountIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("bench.%s.%d", b.runID, i)
	}
	return out
}

func (b *relayBench) progress(format string, args ...any) {
	fmt.Fprintf(b.stderr, "bench: "+format+"\n", args...)
}

// locker returns a Locker over the --lock-redis masters (the data Redis by default) whose
// lease waits go to b.waits, and the number of masters.
func (b *relayBench) locker() (*lock.Locker, int, func(), error) {
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
func (b *relayBench) commandCount(ctx context.Context) (data, masters int64, err error) {
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
func (b *relayBench) cleanupPrefix(ctx context.Context, prefix string) {
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

// runRelayBench runs the relay scenario on the data Redis (embedded by default).
func runRelayBench(ctx context.Context, f benchFlags, stdout, stderr io.Writer) error {
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	rdb, closeRedis, err := f.redis.connect(ctx, log, true)
	if err != nil {
		return err
	}
	defer closeRedis()
	b := &relayBench{f: f, rdb: rdb, log: log, stdout: stdout, stderr: stderr, runID: newRunID()}
	return b.runRelay(ctx)
}
