package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/ledger"
)

// load is one run's closed-loop load: Workers goroutines, each issuing one operation at a
// time until the run's duration or operation budget is spent.
type load struct {
	r   *runner
	d   driver
	st  *state
	mix Mix
	tag string // makes transfer and hold IDs unique to the run
}

// unsettled is an operation whose final outcome the load did not learn: a transfer answered
// pending or not at all, a hold whose placing or resolving got no clear answer.
type unsettled struct {
	kind     Kind // Transfer or Hold
	id       string
	from, to int // account indexes (hold: from)
	amount   int64
}

// loadOutcome is what the workers of one run saw, merged.
type loadOutcome struct {
	elapsed           time.Duration
	lat               *Latencies
	applied, rejected int64
	byKind            [numKinds]int64
	errors            map[string]int64 // failed operations by code
	unsettled         []unsettled
	// unknownIn and unknownOut are the amounts of deposits, and of withdrawals, whose
	// answers were lost: the ledger may or may not hold them.
	unknownIn, unknownOut int64
}

// worker is one goroutine's share, merged at the end.
type worker struct {
	loadOutcome
	rng *rand.Rand
	seq int64
	w   int
}

// run starts the workers and returns their merged outcome once all have stopped.
func (ld *load) run(ctx context.Context, label string) *loadOutcome {
	cfg := ld.r.cfg
	workers := make([]*worker, cfg.Workers)
	var (
		issued, done, failed atomic.Int64
		wg                   sync.WaitGroup
	)
	start := cfg.Now()
	deadline := start.Add(cfg.Duration)
	next := func() bool {
		return ctx.Err() == nil && cfg.Now().Before(deadline) && (cfg.Ops == 0 || issued.Add(1) <= cfg.Ops)
	}
	stopProgress := ld.r.progress.live(label, start, cfg.Duration, &done, &failed)
	for i := range workers {
		w := &worker{rng: rngFor(i), w: i, loadOutcome: loadOutcome{lat: NewLatencies(), errors: map[string]int64{}}}
		workers[i] = w
		wg.Go(func() {
			ctx := withWorker(ctx, i)
			for next() {
				t0 := cfg.Now()
				k := ld.mix.pick(w.rng)
				a := ld.op(ctx, w, k)
				w.byKind[k]++
				switch a.Outcome {
				case Applied:
					w.applied++
				case Rejected:
					w.rejected++
				default:
					w.errors[a.Code]++
					failed.Add(1)
				}
				if a.Outcome == Applied || a.Outcome == Rejected {
					w.lat.Record(cfg.Now().Sub(t0))
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := cfg.Now().Sub(start)
	stopProgress()

	out := &loadOutcome{elapsed: elapsed, lat: NewLatencies(), errors: map[string]int64{}}
	for _, w := range workers {
		out.lat.Merge(w.lat)
		out.applied += w.applied
		out.rejected += w.rejected
		for k := range out.byKind {
			out.byKind[k] += w.byKind[k]
		}
		for c, n := range w.errors {
			out.errors[c] += n
		}
		out.unsettled = append(out.unsettled, w.unsettled...)
		out.unknownIn += w.unknownIn
		out.unknownOut += w.unknownOut
	}
	return out
}

// op performs one operation of kind k on random accounts and books what its answer says.
// A hold is placed and then captured or voided: one operation, answered by the worse of
// its two answers.
func (ld *load) op(ctx context.Context, w *worker, k Kind) Answer {
	st := ld.st
	n := len(st.ids)
	i := w.rng.IntN(n)
	amount := 1 + w.rng.Int64N(100)
	w.seq++
	switch k {
	case Withdrawal:
		a := Classify(ld.d.withdraw(ctx, st.ids[i], amount))
		switch a.Outcome {
		case Applied:
			st.expected[i].Add(-amount)
		case Unknown:
			st.uncertain[i].Store(true)
			w.unknownOut += amount
		}
		return a
	case Transfer:
		j := w.rng.IntN(n - 1)
		if j >= i {
			j++
		}
		id := fmt.Sprintf("t%s.%d.%d", ld.tag, w.w, w.seq)
		status, err := ld.d.transfer(ctx, id, st.ids[i], st.ids[j], amount)
		a := Classify(err)
		switch {
		case a.Outcome == Applied && status == ledger.TransferCompleted:
			st.expected[i].Add(-amount)
			st.expected[j].Add(amount)
		case a.Outcome == Applied && status == ledger.TransferRefunded:
		case a.Outcome == Applied || a.Outcome == Unknown: // pending, or no answer: ask again after the load
			w.unsettled = append(w.unsettled, unsettled{kind: Transfer, id: id, from: i, to: j, amount: amount})
		}
		return a
	case Hold:
		id := fmt.Sprintf("h%s.%d.%d", ld.tag, w.w, w.seq)
		a := Classify(ld.d.placeHold(ctx, st.ids[i], id, amount))
		if a.Outcome == Unknown {
			w.unsettled = append(w.unsettled, unsettled{kind: Hold, id: id, from: i, amount: amount})
		}
		if a.Outcome != Applied {
			return a
		}
		capture := w.rng.IntN(2) == 0
		var err error
		if capture {
			err = ld.d.captureHold(ctx, st.ids[i], id)
		} else {
			err = ld.d.voidHold(ctx, st.ids[i], id)
		}
		a = Classify(err)
		switch {
		case a.Outcome == Applied && capture:
			st.expected[i].Add(-amount)
		case a.Outcome != Applied: // the hold may still be pending: resolve it after the load
			w.unsettled = append(w.unsettled, unsettled{kind: Hold, id: id, from: i, amount: amount})
		}
		return a
	default:
		a := Classify(ld.d.deposit(ctx, st.ids[i], amount))
		switch a.Outcome {
		case Applied:
			st.expected[i].Add(amount)
		case Unknown:
			st.uncertain[i].Store(true)
			w.unknownIn += amount
		}
		return a
	}
}

// settleTimeout bounds how long the bench waits for the outcome of one unsettled operation.
const settleTimeout = 30 * time.Second

// settle learns the final outcome of every unsettled operation and books it: a transfer is
// asked again by its ID until it is completed or refunded (which drives a pending one on);
// a hold is read, and voided while still pending. It returns a problem for each operation
// whose outcome stayed unknown (its accounts are then left out of the exact checks).
func (ld *load) settle(ctx context.Context, out *loadOutcome) []string {
	var (
		mu       sync.Mutex
		problems []string
	)
	st := ld.st
	_ = parallel(ctx, min(ld.r.cfg.Workers, len(out.unsettled)), len(out.unsettled), func(i int) error {
		u := out.unsettled[i]
		deadline := ld.r.cfg.Now().Add(settleTimeout)
		for attempt := 0; ; attempt++ {
			done, err := ld.settleOne(ctx, u)
			if done {
				return nil
			}
			if ld.r.cfg.Now().After(deadline) || ctx.Err() != nil {
				st.uncertain[u.from].Store(true)
				if u.kind == Transfer {
					st.uncertain[u.to].Store(true)
				}
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s %s: no final outcome within %v (last: %v)", u.kind, u.id, settleTimeout, err))
				mu.Unlock()
				return nil
			}
			_ = backoff.Wait(ctx, retryDelay(attempt+1)) // a cancellation ends the next round
		}
	})
	return problems
}

// settleOne tries once to learn and book u's outcome; done is false when it must be tried
// again.
func (ld *load) settleOne(ctx context.Context, u unsettled) (done bool, err error) {
	st := ld.st
	if u.kind == Transfer {
		status, err := ld.d.transfer(ctx, u.id, st.ids[u.from], st.ids[u.to], u.amount)
		switch a := Classify(err); {
		case a.Outcome == Applied && status == ledger.TransferCompleted:
			st.expected[u.from].Add(-u.amount)
			st.expected[u.to].Add(u.amount)
			return true, nil
		case a.Outcome == Applied && status == ledger.TransferRefunded:
			return true, nil
		case a.Outcome == Applied:
			return false, fmt.Errorf("still %s", status)
		case !a.retryable():
			return true, nil // refused now: the first attempt wrote nothing either
		default:
			return false, err
		}
	}
	status, err := ld.d.hold(ctx, st.ids[u.from], u.id)
	switch {
	case notFound(err):
		return true, nil // never placed
	case err != nil:
		return false, err
	case status == ledger.HoldCaptured:
		st.expected[u.from].Add(-u.amount)
		return true, nil
	case status == ledger.HoldPending:
		return false, ld.d.voidHold(ctx, st.ids[u.from], u.id)
	default: // voided or expired
		return true, nil
	}
}
