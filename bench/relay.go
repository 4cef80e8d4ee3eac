package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/internal/redisx"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// RelayConfig configures RunRelay. The zero value of every field but Redis and NewLeaser
// has a usable default.
type RelayConfig struct {
	// Redis is the data Redis (required).
	Redis redis.UniversalClient
	// NewLeaser returns a fresh partition leaser (a lock.Locker) for one relay and a
	// function that closes it (required). The scenario runs three relays.
	NewLeaser func() (outbox.Leaser, func(), error)
	// LockMasters are the leasers' Redis masters when other than Redis, to count their
	// commands while the relays idle.
	LockMasters []*redis.Client
	// Accounts written to. Default 1000.
	Accounts int
	// Partitions of the ledger and outbox. Default 16.
	Partitions int
	// MaxBatch is the ledger's largest group commit. Default 64.
	MaxBatch int
	// Workers write concurrently. Default 64.
	Workers int
	// WithdrawEvery: one write in this many is a withdrawal of 1, the others deposits
	// (0: deposits only).
	WithdrawEvery int
	// SeedBalance is deposited into every account first. Default 1,000,000.
	SeedBalance int64
	// Backlog is the number of writes made before the relay starts. Default 50,000;
	// negative: none.
	Backlog int
	// Rate (writes/s) and Duration of the steady phase. Defaults 5,000 and 10s.
	Rate     int
	Duration time.Duration
	// PollInterval is the relay's wait after a read found nothing. Default
	// outbox.DefaultPollInterval.
	PollInterval time.Duration
	// DrainTimeout bounds the wait for the relay to deliver everything. Default 1m.
	DrainTimeout time.Duration
	// IdleWindow is how long the commands of three idle relays are counted. Default 5s.
	IdleWindow time.Duration
	// Prefix starts the scenario's key prefix. Default "bench".
	Prefix string
	// KeepKeys keeps the scenario's keys instead of deleting them.
	KeepKeys bool
	// Logger receives the relays' warnings. Default: discard.
	Logger *slog.Logger
	// Out receives the results table; Progress, when set, a status line (a terminal).
	Out, Progress io.Writer
}

func (c RelayConfig) withDefaults() RelayConfig {
	orDefault(&c.Accounts, 1000)
	orDefault(&c.Partitions, DefaultPartitions)
	orDefault(&c.MaxBatch, DefaultMaxBatch)
	orDefault(&c.Workers, DefaultWorkers)
	orDefault(&c.Backlog, 50_000)
	orDefault(&c.Rate, 5000)
	orDefault(&c.SeedBalance, DefaultSeedBalance)
	orDefault(&c.Duration, DefaultDuration)
	orDefault(&c.PollInterval, outbox.DefaultPollInterval)
	orDefault(&c.DrainTimeout, time.Minute)
	orDefault(&c.IdleWindow, 5*time.Second)
	orDefault(&c.Prefix, DefaultPrefix)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c
}

// Validate returns an error describing the first invalid field of c (after defaults): a
// *FieldError, or an error saying that Redis or NewLeaser is missing.
func (c RelayConfig) Validate() error {
	c = c.withDefaults()
	if c.Redis == nil || c.NewLeaser == nil {
		return errors.New("bench: relay: a Redis and a leaser are required")
	}
	switch {
	case c.Accounts < 1:
		return invalid("Accounts", "must be positive")
	case c.Partitions < 1:
		return invalid("Partitions", "must be positive")
	case c.MaxBatch < 1:
		return invalid("MaxBatch", "must be positive")
	case c.Workers < 1:
		return invalid("Workers", "must be positive")
	case c.Rate < 1:
		return invalid("Rate", "must be positive")
	case c.WithdrawEvery < 0:
		return invalid("WithdrawEvery", "must not be negative")
	case c.SeedBalance < 0:
		return invalid("SeedBalance", "must not be negative")
	case c.Duration < 0:
		return invalid("Duration", "must not be negative")
	case c.PollInterval < 0:
		return invalid("PollInterval", "must not be negative")
	case c.DrainTimeout < 0:
		return invalid("DrainTimeout", "must not be negative")
	case c.IdleWindow < 0:
		return invalid("IdleWindow", "must not be negative")
	}
	return checkPrefix(c.Prefix)
}

// RunRelay measures the outbox relay on ledger-written events: first its throughput on a
// backlog (setup events plus Backlog writes made before it starts), then the end-to-end lag
// while the ledger writes a steady Rate for Duration, then the commands three idle relays of
// the group cost. It prints a table to Out and returns an error for an invalid cfg, a failed
// setup or delivery, or when some event did not take effect exactly once.
func RunRelay(ctx context.Context, cfg RelayConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	runID := newRunID()
	prefix := fmt.Sprintf("%s-%s-relay", cfg.Prefix, runID)
	prog := newProgress(cfg.Progress, time.Now)
	defer prog.clear()
	if !cfg.KeepKeys {
		defer func() { _ = deletePrefix(context.WithoutCancel(ctx), cfg.Redis, prefix) }()
	}
	leaser, closeLeaser, err := cfg.NewLeaser()
	if err != nil {
		return err
	}
	defer closeLeaser()
	l, err := ledger.Open(ctx, cfg.Redis, ledger.Config{Prefix: prefix, Partitions: cfg.Partitions, MaxBatch: cfg.MaxBatch})
	if err != nil {
		return err
	}
	ids := make([]string, cfg.Accounts)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s.%d", prefix, i)
	}
	wl := &relayWrites{l: l, ids: ids, withdrawEvery: cfg.WithdrawEvery}
	prog.status("relay: opening %d accounts", len(ids))
	if err := openAccounts(ctx, libraryDriver{l: l}, ids, cfg.SeedBalance, cfg.Workers); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	prog.status("relay: writing a backlog of %d operations", cfg.Backlog)
	var issued atomic.Int64
	backlog := wl.run(ctx, cfg.Workers, func() bool { return ctx.Err() == nil && issued.Add(1) <= int64(cfg.Backlog) })
	if n := backlog.errorCount(); n > 0 {
		return fmt.Errorf("backlog: %d writes failed: %v", n, backlog.errors)
	}

	dd, err := outbox.NewDedup(cfg.Redis, outbox.DedupConfig{Prefix: prefix, Name: "bench"})
	if err != nil {
		return err
	}
	sink := newLagSink(dd)
	// As in serve and relay: the relay's blocked reads get a pool of their own.
	relayRDB, closeRelayRDB := redisx.Pooled(cfg.Redis, cfg.Partitions+16)
	defer closeRelayRDB()
	relayConfig := func(owner string) outbox.Config {
		return outbox.Config{Prefix: prefix, Partitions: cfg.Partitions, Group: "bench", Owner: owner,
			Sinks: []outbox.Sink{sink}, PollInterval: cfg.PollInterval, Logger: cfg.Logger}
	}
	relay, err := outbox.NewRelay(relayRDB, leaser, relayConfig("bench-"+runID))
	if err != nil {
		return err
	}
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()
	stop := sync.OnceValue(func() error { stopRelay(); return <-relayDone })
	defer stop()

	drained := l.Stats().Operations
	prog.status("relay: delivering the backlog of %d events", drained)
	if err := sink.wait(ctx, cfg.Redis, cfg.Partitions, drained, cfg.DrainTimeout); err != nil {
		return fmt.Errorf("backlog delivery: %w", err)
	}
	drainTime := time.Duration(sink.last.Load() - sink.first.Load())

	prog.status("relay: writing %d operations/s for %v", cfg.Rate, cfg.Duration)
	steadyStart := time.Now()
	sink.since.Store(steadyStart.UnixNano())
	jobs := make(chan struct{}, cfg.Workers)
	paced := make(chan struct{})
	go func() { defer close(paced); pace(ctx, cfg.Rate, cfg.Duration, jobs) }()
	steady := wl.run(ctx, cfg.Workers, func() bool { _, ok := <-jobs; return ok })
	<-paced
	writeEnd := time.Now()
	total := l.Stats().Operations
	if err := sink.wait(ctx, cfg.Redis, cfg.Partitions, total, cfg.DrainTimeout); err != nil {
		return fmt.Errorf("steady delivery: %w", err)
	}
	tail := max(0, time.Unix(0, sink.last.Load()).Sub(writeEnd))
	prog.status("relay: 3 relays idle; counting their commands for %v", cfg.IdleWindow)
	idleData, idleMasters, err := measureIdle(ctx, cfg, relayRDB, relayConfig, "bench-"+runID)
	if err != nil {
		return fmt.Errorf("idle relays: %w", err)
	}
	if err := stop(); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	prog.status("relay: checking watermarks of %d accounts", len(ids))
	exact, err := checkWatermarks(ctx, l, dd, ids)
	if err != nil {
		return err
	}
	effects, err := sink.effects(ctx, cfg.Redis, cfg.Partitions)
	if err != nil {
		return err
	}
	prog.clear()

	sink.mu.Lock()
	lag, applied, dups := sink.lag, sink.applied, sink.duplicates
	sink.mu.Unlock()
	writeSecs := writeEnd.Sub(steadyStart).Seconds()
	out := cfg.Out
	fmt.Fprintf(out, "Relay: %d accounts, %d partitions, ledger optimistic with group commit, %d writers, 1 withdrawal in %d; "+
		"relay leases over %d lock master(s), poll interval %v; sink: Dedup with an INCR effect; GOMAXPROCS %d, %s.\n\n",
		len(ids), cfg.Partitions, cfg.Workers, cfg.WithdrawEvery, max(len(cfg.LockMasters), 1), cfg.PollInterval, runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintln(out, "| measure | value |")
	fmt.Fprintln(out, "|---|---|")
	fmt.Fprintf(out, "| backlog delivered (events) | %d in %.3f s |\n", drained, drainTime.Seconds())
	fmt.Fprintf(out, "| relay throughput (events/s) | %.0f |\n", float64(drained)/max(drainTime.Seconds(), 1e-9))
	fmt.Fprintf(out, "| steady write rate, target / achieved (ops/s) | %d / %.0f |\n", cfg.Rate, float64(steady.answered())/writeSecs)
	fmt.Fprintf(out, "| write errors | %d |\n", steady.errorCount())
	fmt.Fprintf(out, "| write latency p50 / p99 (ms) | %.2f / %.2f |\n", ms(steady.lat.Quantile(0.5)), ms(steady.lat.Quantile(0.99)))
	fmt.Fprintf(out, "| events delivered in the steady phase | %d (%.0f events/s) |\n", total-drained, float64(total-drained)/writeSecs)
	fmt.Fprintf(out, "| end-to-end lag p50 / p95 / p99 / max (ms) | %.2f / %.2f / %.2f / %.2f |\n",
		ms(lag.Quantile(0.5)), ms(lag.Quantile(0.95)), ms(lag.Quantile(0.99)), ms(lag.Max()))
	fmt.Fprintf(out, "| last event applied after writes stopped (ms) | %.2f |\n", ms(tail))
	fmt.Fprintf(out, "| idle, 3 relays of the group, no traffic: commands/s on the data Redis / lock masters | %s / %s |\n", idleData, idleMasters)
	fmt.Fprintf(out, "| duplicates seen by dedup | %d |\n", dups)
	verdict := "yes"
	if !exact || effects != total || applied != total {
		verdict = "NO"
	}
	fmt.Fprintf(out, "| exactly once in effect | %s: %d events committed, %d effects, %d applied; watermark = version on %d accounts: %v |\n",
		verdict, total, effects, applied, len(ids), exact)
	if steady.errorCount() > 0 {
		fmt.Fprintf(out, "\nWrite errors by code: %v\n", steady.errors)
	}
	if verdict != "yes" {
		return errors.New("bench: relay: events did not take effect exactly once")
	}
	return ctx.Err()
}

// relayWrites are the relay scenario's writes: deposits of 1..100, and one withdrawal of 1
// in withdrawEvery, on random accounts.
type relayWrites struct {
	l             *ledger.Ledger
	ids           []string
	withdrawEvery int
}

// writeCounts is what the writes of one phase answered.
type writeCounts struct {
	ok, rejected int64
	errors       map[string]int64
	lat          *Latencies
}

func (c *writeCounts) answered() int64 { return c.ok + c.rejected }

func (c *writeCounts) errorCount() int64 {
	var n int64
	for _, v := range c.errors {
		n += v
	}
	return n
}

// run starts workers goroutines that each write for as long as next returns true, and
// returns their merged counts once all have stopped.
func (wl *relayWrites) run(ctx context.Context, workers int, next func() bool) *writeCounts {
	parts := make([]*writeCounts, workers)
	var wg sync.WaitGroup
	for w := range parts {
		c := &writeCounts{errors: map[string]int64{}, lat: NewLatencies()}
		parts[w] = c
		rng := rngFor(w)
		wg.Go(func() {
			for next() {
				a := wl.ids[rng.IntN(len(wl.ids))]
				start := time.Now()
				var err error
				if wl.withdrawEvery > 0 && rng.IntN(wl.withdrawEvery) == 0 {
					_, err = wl.l.Withdraw(ctx, ledger.Withdraw{Account: a, Currency: currency, Amount: 1}, ledger.WriteOptions{})
				} else {
					_, err = wl.l.Deposit(ctx, ledger.Deposit{Account: a, Currency: currency, Amount: 1 + rng.Int64N(100)}, ledger.WriteOptions{})
				}
				switch ans := Classify(err); ans.Outcome {
				case Applied:
					c.ok++
				case Rejected:
					c.rejected++
				default:
					c.errors[ans.Code]++
					continue
				}
				c.lat.Record(time.Since(start))
			}
		})
	}
	wg.Wait()
	all := &writeCounts{errors: map[string]int64{}, lat: NewLatencies()}
	for _, c := range parts {
		all.ok += c.ok
		all.rejected += c.rejected
		all.lat.Merge(c.lat)
		for k, v := range c.errors {
			all.errors[k] += v
		}
	}
	return all
}

// lagSink is the relay scenario's consumer: it applies every message through a Dedup whose
// effect increments a per-partition counter, and records the end-to-end lag (time of
// application minus Event.Time) of every first application of an event written at or after
// since.
type lagSink struct {
	d   *outbox.Dedup
	eff *outbox.Effect

	since atomic.Int64 // UnixNano; events before it do not count toward the lag
	first atomic.Int64 // UnixNano of the first delivery
	last  atomic.Int64 // UnixNano of the latest application

	mu         sync.Mutex
	applied    int64
	duplicates int64
	lag        *Latencies
}

func newLagSink(d *outbox.Dedup) *lagSink {
	return &lagSink{d: d, eff: outbox.NewEffect(`return redis.call('INCR', KEYS[1])`), lag: NewLatencies()}
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
				s.lag.Record(now.Sub(e.Time))
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

// wait polls until the effect counters reach want, ctx ends or timeout passes.
func (s *lagSink) wait(ctx context.Context, rdb redis.UniversalClient, partitions int, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		got, err := s.effects(ctx, rdb, partitions)
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

// pace sends rate tokens per second on jobs for d (catching up after a stall), then closes
// jobs.
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

// measureIdle starts two more relays of the running relay's group (as one serve and two
// relay processes would run), waits until the three have split the partitions, and returns
// the commands per second the data Redis and the lock masters executed during
// cfg.IdleWindow without traffic ("-" where they cannot be counted). It stops the relays it
// started.
func measureIdle(ctx context.Context, cfg RelayConfig, rdb redis.UniversalClient, config func(owner string) outbox.Config, first string) (data, masters string, err error) {
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
	owners := map[string]bool{first: true}
	for i := 2; i <= 3; i++ {
		leaser, closeLeaser, err := cfg.NewLeaser()
		if err != nil {
			return "", "", err
		}
		closers = append(closers, closeLeaser)
		rc := config(fmt.Sprintf("%s-%d", first, i))
		owners[rc.Owner] = true
		r, err := outbox.NewRelay(rdb, leaser, rc)
		if err != nil {
			return "", "", err
		}
		wg.Go(func() { _ = r.Run(ctx) })
	}
	base := config("")
	admin, err := outbox.NewAdmin(cfg.Redis, outbox.AdminConfig{Prefix: base.Prefix, Partitions: cfg.Partitions, Group: base.Group})
	if err != nil {
		return "", "", err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		sts, err := admin.Status(ctx)
		if err != nil {
			return "", "", err
		}
		share := (cfg.Partitions + len(owners) - 1) / len(owners)
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
		if balanced && total == cfg.Partitions {
			break
		}
		if time.Now().After(deadline) {
			return "", "", errors.New("the relays did not split the partitions within a minute")
		}
		if err := backoff.Wait(ctx, 50*time.Millisecond); err != nil {
			return "", "", err
		}
	}
	counter := commandCounter{data: cfg.Redis, masters: cfg.LockMasters}
	dataBefore, mastersBefore, ok1 := counter.count(ctx)
	start := time.Now()
	if err := backoff.Wait(ctx, cfg.IdleWindow); err != nil {
		return "", "", err
	}
	dataAfter, mastersAfter, ok2 := counter.count(ctx)
	if !ok1 || !ok2 {
		return "-", "-", nil
	}
	secs := time.Since(start).Seconds()
	data = fmt.Sprintf("%.0f", float64(dataAfter-dataBefore)/secs)
	masters = "-"
	if len(cfg.LockMasters) > 0 {
		masters = fmt.Sprintf("%.0f", float64(mastersAfter-mastersBefore)/secs)
	}
	return data, masters, nil
}

// checkWatermarks reports whether the consumer's watermark of every account equals the
// account's version: every event, the last included, was applied.
func checkWatermarks(ctx context.Context, l *ledger.Ledger, d *outbox.Dedup, accounts []string) (bool, error) {
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
			return false, nil
		}
	}
	return true, nil
}
