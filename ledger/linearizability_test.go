package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// balanceInput is one operation of the history: a deposit or a withdrawal.
type balanceInput struct {
	withdraw bool
	amount   int64
}

// balanceOutput is what the ledger answered: applied with the resulting posted balance, or
// rejected for insufficient funds.
type balanceOutput struct {
	applied bool
	balance int64
}

// balanceModel is the sequential specification of one account without allow_negative.
var balanceModel = porcupine.Model{
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(int64), input.(balanceInput), output.(balanceOutput)
		switch {
		case !in.withdraw:
			return out.applied && out.balance == s+in.amount, s + in.amount
		case s >= in.amount:
			return out.applied && out.balance == s-in.amount, s - in.amount
		default:
			return !out.applied, s
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(balanceInput), output.(balanceOutput)
		return fmt.Sprintf("w=%v %d -> %v %d", in.withdraw, in.amount, out.applied, out.balance)
	},
}

// history records operations with their real-time intervals.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) add(client int, in balanceInput, out balanceOutput, call, ret time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out,
		Call: int64(call.Sub(h.start)), Return: int64(ret.Sub(h.start))})
}

type hammerResult struct {
	hist         *history
	acknowledged int64 // sum of applied deposits minus applied withdrawals
	applied      int
	conflicts    int
}

// hammer runs workers × opsEach mixed deposits/withdrawals (half each) on one account,
// spreading the workers over the given ledgers (each standing for one process), and records
// the history.
func hammer(t *testing.T, ledgers []*ledger.Ledger, account string, workers, opsEach int) hammerResult {
	t.Helper()
	return hammerMix(t, ledgers, account, workers, opsEach, 5, false)
}

// hammerMix is hammer with withdrawTenths operations in ten withdrawals; keyed gives every
// operation an Idempotency-Key of its own (its record is read, and a refusal is recorded).
func hammerMix(t *testing.T, ledgers []*ledger.Ledger, account string, workers, opsEach, withdrawTenths int, keyed bool) hammerResult {
	t.Helper()
	ctx := context.Background()
	res := hammerResult{hist: &history{start: time.Now()}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := ledgers[w%len(ledgers)]
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for i := 0; i < opsEach; i++ {
				in := balanceInput{withdraw: rng.IntN(10) < withdrawTenths, amount: 1 + rng.Int64N(100)}
				call := time.Now()
				var rc ledger.Receipt
				var err error
				var opts ledger.WriteOptions
				if keyed {
					opts.IdempotencyKey = fmt.Sprintf("w%d-%d", w, i)
				}
				if in.withdraw {
					rc, err = l.Withdraw(ctx, ledger.Withdraw{Account: account, Currency: "USD", Amount: in.amount}, opts)
				} else {
					rc, err = l.Deposit(ctx, ledger.Deposit{Account: account, Currency: "USD", Amount: in.amount}, opts)
				}
				ret := time.Now()
				switch {
				case err == nil:
					op := decodeOp(t, rc)
					bal := op.Account.Balances["USD"].Posted
					res.hist.add(w, in, balanceOutput{applied: true, balance: bal}, call, ret)
					mu.Lock()
					res.applied++
					if in.withdraw {
						res.acknowledged -= in.amount
					} else {
						res.acknowledged += in.amount
					}
					mu.Unlock()
				case errors.Is(err, ledger.ErrInsufficientFunds):
					res.hist.add(w, in, balanceOutput{}, call, ret)
				case errors.Is(err, ledger.ErrVersionConflict):
					// Retries exhausted: the operation provably changed nothing, so it is
					// not part of the history.
					mu.Lock()
					res.conflicts++
					mu.Unlock()
				default:
					t.Errorf("unexpected error: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return res
}

// TestConcurrentOneAccount: 32 goroutines × 200 mixed operations on ONE account without
// allow_negative. The final balance is the sum of the acknowledged operations and never
// negative, the stream replays to the snapshot, and the history is linearizable.
func TestConcurrentOneAccount(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	for _, tc := range []struct {
		name      string
		processes int
		cfg       ledger.Config
		cacheAll  bool // decide on stale cached snapshots over and over (CacheEverySnapshot)
		withdraws int  // withdrawals in ten operations
		keyed     bool // every operation with an Idempotency-Key of its own
	}{
		{"group commit, 2 processes", 2, ledger.Config{Prefix: "gc"}, false, 5, false},
		{"optimistic only, 4 processes", 4, ledger.Config{Prefix: "opt", DisableGroupCommit: true, MaxRetries: 200, RetryBackoffMax: 20 * time.Millisecond}, false, 5, false},
		{"group commit, 3 processes, every snapshot cached", 3, ledger.Config{Prefix: "cache"}, true, 5, false},
		// Every request alone, and withdrawals keeping the balance near zero: refusals
		// decided on stale cached snapshots are common, and one taken as final (no version
		// check) is a wrong answer porcupine sees.
		{"optimistic only, 4 processes, every snapshot cached", 4, ledger.Config{Prefix: "optcache", DisableGroupCommit: true, MaxRetries: 200, RetryBackoffMax: 20 * time.Millisecond}, true, 6, false},
		// The same with keys: a keyed request reads its record but decides on the cached
		// snapshot, and its refusal is recorded; one recorded without the version check of
		// what it read would be replayed to its client as final, a wrong answer.
		{"optimistic only, 4 processes, every snapshot cached, keyed", 4, ledger.Config{Prefix: "keycache", DisableGroupCommit: true, MaxRetries: 200, RetryBackoffMax: 20 * time.Millisecond}, true, 6, true},
		{"group commit, 3 processes, every snapshot cached, keyed", 3, ledger.Config{Prefix: "gckeycache"}, true, 6, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ledgers []*ledger.Ledger
			for i := 0; i < tc.processes; i++ {
				l := MustOpen(t, rdb, tc.cfg)
				if tc.cacheAll {
					l.CacheEverySnapshot()
				}
				ledgers = append(ledgers, l)
			}
			MustOpenAccount(t, ledgers[0], "hot", false)
			res := hammerMix(t, ledgers, "hot", 32, 200, tc.withdraws, tc.keyed)

			acc := requireConsistent(t, ledgers[0], "hot")
			bal := acc.Balances["USD"]
			assert.Equal(t, res.acknowledged, bal.Posted, "balance equals the sum of acknowledged operations")
			assert.GreaterOrEqual(t, bal.Available, int64(0))
			assert.Equal(t, int64(res.applied+1), acc.Version, "one event per acknowledged operation")

			result, info := porcupine.CheckOperationsVerbose(balanceModel, res.hist.ops, 60*time.Second)
			if result != porcupine.Ok {
				path := t.TempDir() + "/history.html"
				_ = porcupine.VisualizePath(balanceModel, info, path)
				t.Fatalf("history is not linearizable (%v); see %s", result, path)
			}
			var conflicts, stale int64
			for _, l := range ledgers {
				conflicts += l.Stats().Conflicts
				stale += l.Stats().StaleSnapshots
			}
			t.Logf("%d operations applied, %d rejected by the retry bound, %d version conflicts retried (%d on stale cached snapshots)",
				res.applied, res.conflicts, conflicts, stale)
			if tc.cacheAll {
				require.Positive(t, stale, "the history covered decisions on stale cached snapshots")
			}
		})
	}
}

// TestLinearizabilityCatchesLostUpdates proves the check above can fail: a store whose
// commit skips the version check loses updates, and porcupine (or the balance sum) sees it.
func TestLinearizabilityCatchesLostUpdates(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	cfg := ledger.Config{Prefix: "broken", DisableGroupCommit: true}
	var ledgers []*ledger.Ledger
	for i := 0; i < 4; i++ {
		l := MustOpen(t, rdb, cfg)
		ledgers = append(ledgers, l)
	}
	MustOpenAccount(t, ledgers[0], "hot", false)
	for _, l := range ledgers {
		l.BreakVersionCheck()
	}
	res := hammer(t, ledgers, "hot", 16, 50)
	result := porcupine.CheckOperationsTimeout(balanceModel, res.hist.ops, 60*time.Second)
	require.Equal(t, porcupine.Illegal, result, "a commit without the version check must produce a non-linearizable history")
}
