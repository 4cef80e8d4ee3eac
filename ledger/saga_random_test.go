package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// TestTransferSagaUnderRandomConcurrency races, on a single Redis (where the credit's commit
// also completes the transfer) and on Cluster (where a separate step does), bursts of
// duplicate transfer requests sent through two ledgers (two serve processes) — same ID and
// body, same ID with another amount or source — some cancelled within 3ms, i.e. mid-saga;
// destinations closed while transfers are on their way to them; keyless deposits and
// withdrawals on the same accounts. Each ledger's transfer process manager is fed by a
// relay (the two relays share the partitions) and a sweeper drives whatever is pending for
// a millisecond. Half the commits wait up to 3ms for two more requests to queue in their
// partition, so that credits share batches with the writes around them. Afterwards every
// transfer must have exactly one debit and exactly one of credit or refund, its record must
// say which (completed ⇔ credited, refunded ⇔ refunded,
// at the time every answer gave), each ID must have applied at most one of its requests,
// every answer must agree with the record, each balance must be its funding plus what
// moved, and Verify must be clean with nothing in flight and no dead letters.
func TestTransferSagaUnderRandomConcurrency(t *testing.T) {
	for _, b := range backends() {
		if b.Name == "embedded" {
			continue // the credit path is the single Redis one, covered by standalone
		}
		t.Run(b.Name, func(t *testing.T) { runSagaRandom(t, b.Start(t)) })
	}
}

// sagaVariant is one body sent under a transfer ID; amounts are unique per variant.
type sagaVariant struct {
	id, from, to string
	amount       int64
}

// sagaAnswer is what one CreateTransfer call got back.
type sagaAnswer struct {
	v   *sagaVariant
	res ledger.TransferResult
	err error
}

func runSagaRandom(t *testing.T, rdb redis.UniversalClient) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 11))
	prefix := fmt.Sprintf("sr%d", seed%1_000_000_007)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var ls [2]*ledger.Ledger
	for i := range ls {
		ls[i] = MustOpen(t, rdb, ledger.Config{Prefix: prefix, MaxRetries: 200})
	}
	locker, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { locker.Close() })
	var relays [2]*outbox.Relay
	for i, l := range ls {
		relays[i], err = outbox.NewRelay(rdb, locker, outbox.Config{
			Prefix: prefix, Owner: fmt.Sprintf("relay%d", i), Sinks: []outbox.Sink{l.TransferManager()},
			PollInterval: 2 * time.Millisecond, BlockTimeout: 50 * time.Millisecond, LeaseRetry: 50 * time.Millisecond,
			RetryBackoff: 5 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond, MaxAttempts: 20,
		})
		require.NoError(t, err)
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- relays[i].Run(rctx) }()
		t.Cleanup(func() { stop(); require.NoError(t, <-done) })
	}
	// Half the commits wait, for at most 3ms, until two more requests queue in their
	// partition, so that requests batch together: credits join batches that read for
	// deposits, withdrawals and debits.
	for _, l := range ls {
		l.SetBeforeCommitIn(func(account string) {
			if rand.IntN(2) != 0 {
				return
			}
			for deadline := time.Now().Add(3 * time.Millisecond); l.Waiting(account) < 2 && time.Now().Before(deadline); {
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	stopSweeper := runSweeper(t, ls[1], ledger.SweeperConfig{TransferInterval: 5 * time.Millisecond, StuckAfter: time.Millisecond})
	defer stopSweeper()

	// Funded accounts send and receive, in pairs that share a partition (placement tags):
	// same-partition transfers too, and the partitions the credits go to are busy with
	// other writes. Empty ones only receive, and each is closed in some round while
	// transfers head for it.
	funded := []string{"f..a0", "f..a1", "h..a2", "h..a3", "g..a", "g..b"}
	initial := map[string]int64{}
	for _, a := range funded {
		initial[a] = int64(300 + rng.IntN(300))
		fund(t, ls[0], a, initial[a])
	}
	closable := []string{"c0", "c1", "c2", "c3", "c4", "c5"}
	closeIn := map[string]int{}
	const rounds = 8
	for _, c := range closable {
		fund(t, ls[0], c, 0)
		closeIn[c] = rng.IntN(rounds)
	}
	moneyMoves := map[string]int64{} // applied deposits − withdrawals per account

	var (
		next     int64 = 1
		variants       = map[string][]*sagaVariant{} // transfer ID → the bodies sent under it
		answers  []sagaAnswer
		ids      []string
		closed   = map[string]bool{}
	)
	newVariant := func(id, from, to string) *sagaVariant {
		v := &sagaVariant{id: id, from: from, to: to, amount: next}
		next++
		variants[id] = append(variants[id], v)
		return v
	}
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	for round := range rounds {
		var (
			mu    sync.Mutex
			sends []func()
		)
		for k := range 14 {
			var first *sagaVariant
			if round > 0 && rng.IntN(4) == 0 { // a late retry of an earlier round's ID
				first = variants[ids[rng.IntN(len(ids))]][0]
			} else {
				id := fmt.Sprintf("r%d-t%d", round, k)
				ids = append(ids, id)
				from, to := pick(funded), pick(funded)
				if rng.IntN(3) == 0 {
					to = pick(closable)
				}
				for to == from {
					to = pick(funded)
				}
				first = newVariant(id, from, to)
			}
			for c := range 2 + rng.IntN(4) {
				v := first
				switch r := rng.Float64(); {
				case c > 0 && r < 0.15:
					v = newVariant(first.id, first.from, first.to) // another amount
				case c > 0 && r < 0.2:
					other := pick(funded)
					if other != first.to {
						v = newVariant(first.id, other, first.to) // another source
					}
				}
				l := ls[rng.IntN(2)]
				var after time.Duration
				if rng.Float64() < 0.15 {
					after = time.Duration(1+rng.IntN(3000)) * time.Microsecond
				}
				sends = append(sends, func() {
					rctx, cancel := context.WithCancel(ctx)
					defer cancel()
					if after > 0 {
						defer time.AfterFunc(after, cancel).Stop()
					}
					res, err := l.CreateTransfer(rctx, ledger.TransferRequest{ID: v.id, From: v.from, To: v.to, Currency: "USD", Amount: v.amount})
					mu.Lock()
					answers = append(answers, sagaAnswer{v, res, err})
					mu.Unlock()
				})
			}
		}
		// Keyless deposits and withdrawals on the same accounts, a few in a row from each
		// sender so that they go on while the credits arrive: conflicts, and batches that
		// credits join.
		for range 12 {
			l := ls[rng.IntN(2)]
			type move struct {
				a       string
				amount  int64
				deposit bool
			}
			var moves []move
			for range 8 {
				moves = append(moves, move{pick(funded), int64(1 + rng.IntN(50)), rng.IntN(2) == 0})
			}
			sends = append(sends, func() {
				for _, m := range moves {
					var err error
					amount := m.amount
					if m.deposit {
						_, err = l.Deposit(ctx, ledger.Deposit{Account: m.a, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
					} else {
						_, err = l.Withdraw(ctx, ledger.Withdraw{Account: m.a, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
						amount = -amount
					}
					mu.Lock()
					if err == nil {
						moneyMoves[m.a] += amount
					} else if !errors.Is(err, ledger.ErrInsufficientFunds) {
						t.Errorf("%s of %d on %s: %v", map[bool]string{true: "deposit", false: "withdrawal"}[m.deposit], m.amount, m.a, err)
					}
					mu.Unlock()
				}
			})
		}
		for _, c := range closable {
			if closeIn[c] != round {
				continue
			}
			// A request that died right after its debit, then the destination closes: unless
			// the process managers credit it first, the saga must refund it.
			id := fmt.Sprintf("r%d-%s", round, c)
			ids = append(ids, id)
			v := newVariant(id, pick(funded), c)
			l := ls[rng.IntN(2)]
			sends = append(sends, func() {
				err := l.StartTransfer(ctx, ledger.TransferRequest{ID: v.id, From: v.from, To: v.to, Currency: "USD", Amount: v.amount})
				if err != nil && !errors.Is(err, ledger.ErrInsufficientFunds) {
					t.Errorf("start transfer %s: %v", v.id, err)
				}
				_, err = l.CloseAccount(ctx, c, ledger.WriteOptions{})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					closed[c] = true
				case !errors.Is(err, ledger.ErrAccountNotEmpty): // a credit came first
					t.Errorf("close %s: %v", c, err)
				}
			})
		}
		rng.Shuffle(len(sends), func(i, j int) { sends[i], sends[j] = sends[j], sends[i] })
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, send := range sends {
			wg.Go(func() { <-start; send() })
		}
		close(start)
		wg.Wait()
	}

	// Everything finishes: nothing pending, the relays delivered everything (or Verify
	// already finds a problem, reported below).
	require.Eventually(t, func() bool {
		rep, err := ls[0].Verify(ctx)
		if err != nil || rep.OK() && rep.Pending > 0 {
			return false
		}
		for _, r := range relays {
			sts, err := r.Status(ctx)
			if err != nil {
				return false
			}
			for _, st := range sts {
				if st.Backlog > 0 {
					return false
				}
			}
		}
		return true
	}, time.Minute, 10*time.Millisecond, "every transfer finished and every event delivered")
	rep := requireVerified(t, ls[0])
	for _, st := range rep.Outbox {
		require.Zero(t, st.DeadLetters, "partition %d: the transfer manager gave up on an event", st.Partition)
	}

	// Each transfer's steps in the streams, by ID.
	type steps struct{ debits, credits, refunds int }
	found := map[string]*steps{}
	for _, a := range append(append([]string{}, funded...), closable...) {
		events, _, err := ls[0].Events(ctx, a, 0, ledger.MaxEventsPage)
		require.NoError(t, err)
		for _, e := range events {
			var d ledger.TransferData
			switch e.Type {
			case ledger.EventTransferDebited, ledger.EventTransferCredited, ledger.EventTransferRefunded:
				require.NoError(t, json.Unmarshal(e.Data, &d))
			default:
				continue
			}
			s := found[d.TransferID]
			if s == nil {
				s = &steps{}
				found[d.TransferID] = s
			}
			switch e.Type {
			case ledger.EventTransferDebited:
				s.debits++
			case ledger.EventTransferCredited:
				s.credits++
			default:
				s.refunds++
			}
		}
	}

	// Every transfer's record against its steps and the bodies sent under its ID.
	finals := map[string]ledger.Transfer{}
	want := map[string]int64{}
	for _, a := range closable {
		want[a] = 0
	}
	for a, n := range initial {
		want[a] = n + moneyMoves[a]
	}
	completed, refunded := 0, 0
	for _, id := range ids {
		s := found[id]
		got, err := ls[1].GetTransfer(ctx, id)
		if s == nil {
			require.ErrorIs(t, err, ledger.ErrNotFound, "transfer %s: no step in any stream, yet found", id)
			continue
		}
		require.NoError(t, err, "transfer %s was debited", id)
		finals[id] = got
		var applied *sagaVariant
		for _, v := range variants[id] {
			if v.from == got.From && v.to == got.To && v.amount == got.Amount {
				applied = v
			}
		}
		require.NotNil(t, applied, "transfer %s: the record %+v is none of the requests sent", id, got)
		require.Equal(t, 1, s.debits, "transfer %s: debits", id)
		require.NotNil(t, got.CompletedAt, "transfer %s: finished without a time", id)
		switch got.Status {
		case ledger.TransferCompleted:
			completed++
			require.Equal(t, steps{1, 1, 0}, *s, "transfer %s is completed: one debit, one credit, no refund", id)
			want[got.From] -= got.Amount
			want[got.To] += got.Amount
		case ledger.TransferRefunded:
			refunded++
			require.Equal(t, steps{1, 0, 1}, *s, "transfer %s is refunded: one debit, one refund, no credit", id)
			require.True(t, closed[got.To], "transfer %s refunded (%s), but %s was never closed", id, got.Reason, got.To)
		default:
			t.Fatalf("transfer %s: status %q after everything finished", id, got.Status)
		}
	}
	for id := range found {
		require.Contains(t, finals, id, "steps of transfer %s, which no request made", id)
	}

	// Every answer agrees with the record; a refusal is final.
	outcomes := map[string]int{}
	var refused []sagaAnswer
	for _, a := range answers {
		final, ok := finals[a.v.id]
		switch {
		case a.err == nil:
			outcomes["ok "+a.res.Transfer.Status]++
			require.True(t, ok, "transfer %s answered %+v, but never debited", a.v.id, a.res.Transfer)
			tr := a.res.Transfer
			require.Equal(t, [4]any{final.ID, final.From, final.To, final.Amount}, [4]any{tr.ID, tr.From, tr.To, tr.Amount},
				"transfer %s: the answer is another transfer than the record", a.v.id)
			require.Equal(t, *a.v, sagaVariant{id: final.ID, from: final.From, to: final.To, amount: final.Amount},
				"transfer %s: a request with another body was answered with the transfer", a.v.id)
			if tr.Status != ledger.TransferPending {
				require.Equal(t, final.Status, tr.Status, "transfer %s: answered finished otherwise than recorded", a.v.id)
				require.NotNil(t, tr.CompletedAt)
				require.True(t, final.CompletedAt.Equal(*tr.CompletedAt), "transfer %s: answered finished at %v, recorded %v", a.v.id, tr.CompletedAt, final.CompletedAt)
			}
		case errors.Is(a.err, ledger.ErrIdempotencyKeyReused):
			outcomes["reused"]++
			// While a request from another source held the ID (and was then refused), a
			// copy of the eventual transfer is rightly told the ID is taken.
			if ok && !otherSource(variants[a.v.id]) {
				require.NotEqual(t, *a.v, sagaVariant{id: final.ID, from: final.From, to: final.To, amount: final.Amount},
					"transfer %s: the request that made it was told its ID was reused", a.v.id)
			}
		case errors.Is(a.err, ledger.ErrAccountClosed):
			outcomes["closed"]++
			require.True(t, closed[a.v.to], "transfer %s: %v, but %s was never closed", a.v.id, a.err, a.v.to)
			require.False(t, ok, "transfer %s was refused (%v), yet made: %+v", a.v.id, a.err, final)
			refused = append(refused, a)
		case errors.Is(a.err, ledger.ErrInsufficientFunds):
			outcomes["insufficient"]++
			require.False(t, ok, "transfer %s was refused (%v), yet made: %+v", a.v.id, a.err, final)
			refused = append(refused, a)
		case errors.Is(a.err, context.Canceled):
			outcomes["canceled"]++
		default:
			t.Fatalf("transfer %s: unexpected error %v", a.v.id, a.err)
		}
	}
	for a, n := range want {
		require.Equal(t, n, posted(t, ls[0], a), "%s: funding, deposits and withdrawals, and the completed transfers", a)
	}
	// A refused request sent again, whatever the balances now, replays its refusal.
	for _, a := range refused {
		_, err := ls[rng.IntN(2)].CreateTransfer(ctx, ledger.TransferRequest{ID: a.v.id, From: a.v.from, To: a.v.to, Currency: "USD", Amount: a.v.amount})
		require.Error(t, err, "transfer %s: refused, then made by a late retry", a.v.id)
		require.Equal(t, a.err.Error(), err.Error(), "transfer %s: a late retry got another answer", a.v.id)
		require.True(t, ledger.IsReplayed(err), "transfer %s: a late retry was decided again instead of replayed", a.v.id)
	}
	for a, n := range want {
		require.Equal(t, n, posted(t, ls[0], a), "%s: the late retries moved money", a)
	}
	var used, mixed, stale int64
	for _, l := range ls {
		u, s := l.Prereads()
		used, mixed, stale = used+u, mixed+l.MixedPrereads(), stale+s
	}
	t.Logf("%d transfer IDs (%d completed, %d refunded), %d requests: %v; %d closed; stats %+v / %+v; credits on the request's read %d (%d in batches that read for others, %d stale)",
		len(ids), completed, refunded, len(answers), outcomes, len(closed), ls[0].Stats(), ls[1].Stats(), used, mixed, stale)
	require.Positive(t, completed)
	// The credits took the path that decides on the request's own read of the destination,
	// and some of them found it stale (a deposit, a close or another credit came between)
	// and were read and decided again: the checks above held on both paths. Credits in
	// batches that read for their other requests come in nearly every run (logged above),
	// but not in every one under a loaded machine's timing (the full suite in CI had a run
	// without), so that path is required by TestQueuedCreditDecidesOnPreparedDestination,
	// which makes one.
	require.Positive(t, used, "credits decided on the request's read")
	require.Positive(t, stale, "stale reads sent back")
}

// otherSource reports whether the bodies sent under one ID name more than one source.
func otherSource(vs []*sagaVariant) bool {
	for _, v := range vs {
		if v.from != vs[0].from {
			return true
		}
	}
	return false
}
