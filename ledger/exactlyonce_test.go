package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/internal/workload"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// libraryTarget drives the workload through the ledger library.
type libraryTarget struct{ l *ledger.Ledger }

func (t libraryTarget) OpenAccount(ctx context.Context, id string, s workload.Setup) error {
	cmd := ledger.OpenAccount{ID: id}
	if s.OverdraftLimit > 0 {
		cmd.OverdraftLimit = map[string]int64{workload.Currency: s.OverdraftLimit}
	}
	if _, err := t.l.OpenAccount(ctx, cmd, ledger.WriteOptions{}); err != nil {
		return err
	}
	for _, a := range s.Alerts {
		al := ledger.Alert{ID: a.ID, Account: id, Currency: workload.Currency}
		if a.Below {
			al.Below = &a.Threshold
		} else {
			al.Above = &a.Threshold
		}
		if _, err := t.l.CreateAlert(ctx, ledger.CreateAlert{Alert: al}, ledger.WriteOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// Do sends op as a deposit or withdrawal, or — one request in three, so that copies of one
// keyed request take both paths — as the only operation of a non-atomic batch, whose
// operation ID is the same idempotency key.
func (t libraryTarget) Do(ctx context.Context, op workload.Op) workload.Result {
	var (
		rc   ledger.Receipt
		err  error
		opts = ledger.WriteOptions{IdempotencyKey: op.Key}
	)
	if rand.IntN(3) == 0 {
		typ := ledger.OpDeposit
		if op.Kind != workload.Deposit {
			typ = ledger.OpWithdrawal
		}
		res, _, err := t.l.Batch(ctx, false, []ledger.BatchOp{{Type: typ, ID: op.Key, Account: op.Account, Currency: workload.Currency, Amount: op.Amount}}, ledger.WriteOptions{})
		if err != nil {
			return classify(ledger.Receipt{}, err)
		}
		return classify(ledger.Receipt{Body: res[0].Body}, res[0].Err)
	}
	if op.Kind == workload.Deposit {
		rc, err = t.l.Deposit(ctx, ledger.Deposit{Account: op.Account, Currency: workload.Currency, Amount: op.Amount}, opts)
	} else {
		rc, err = t.l.Withdraw(ctx, ledger.Withdraw{Account: op.Account, Currency: workload.Currency, Amount: op.Amount}, opts)
	}
	return classify(rc, err)
}

// classify maps a ledger result to the workload's outcomes; errors it does not expect are
// rejections with a code the checker refuses.
func classify(rc ledger.Receipt, err error) workload.Result {
	switch {
	case err == nil:
		return workload.Result{Outcome: workload.Applied, Body: rc.Body}
	case errors.Is(err, ledger.ErrInsufficientFunds):
		return workload.Result{Outcome: workload.Rejected, Code: "insufficient_funds"}
	case errors.Is(err, ledger.ErrIdempotencyKeyReused):
		return workload.Result{Outcome: workload.Rejected, Code: "idempotency_key_reused"}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return workload.Result{Outcome: workload.Unknown, Code: "canceled"}
	default:
		return workload.Result{Outcome: workload.Rejected, Code: "unexpected: " + err.Error()}
	}
}

func (t libraryTarget) Events(ctx context.Context, account string) ([]ledger.Event, error) {
	acc, err := t.l.Replay(ctx, account)
	if err != nil {
		return nil, err
	}
	snap, err := t.l.Account(ctx, account)
	if err != nil {
		return nil, err
	}
	if !reflect.DeepEqual(acc, snap) {
		return nil, fmt.Errorf("%s: replay %v != snapshot %v", account, acc, snap)
	}
	var out []ledger.Event
	var after int64
	for {
		events, next, err := t.l.Events(ctx, account, after, ledger.MaxEventsPage)
		if err != nil {
			return nil, err
		}
		out = append(out, events...)
		if next == 0 {
			return out, nil
		}
		after = next
	}
}

func (t libraryTarget) Posted(ctx context.Context, account string) (int64, error) {
	acc, err := t.l.Account(ctx, account)
	if err != nil {
		return 0, err
	}
	return acc.Balances[workload.Currency].Posted, nil
}

// exactlyOnceConfig is the workload every variant runs: few accounts (so batches form),
// bursts of up to 12 copies of a keyed request, a fifth of them with another body, and
// one request in ten cancelled within 3ms; every account has an overdraft limit and two
// alerts, at 0 and at 300, that the balance crosses back and forth.
func exactlyOnceConfig(seed uint64, prefix string) workload.Config {
	return workload.Config{
		Seed: seed, Accounts: 3, Rounds: 6, Keyless: 24, Keys: 10, Burst: 12,
		OtherBody: 0.2, Cancel: 0.1, Prefix: prefix, Overdraft: 400,
		Alerts: []workload.Alert{{ID: "below-0", Below: true, Threshold: 0}, {ID: "above-300", Threshold: 300}},
	}
}

// TestExactlyOnceUnderConcurrentRetries races keyless writes, bursts of duplicates sharing
// an Idempotency-Key (same and other bodies) and cancellations on every Redis, in both
// concurrency modes, with group commit on and off, and checks that no key applies twice,
// every 201 for a key is byte-identical, balances are the sum of distinct applied
// operations and replay equals the snapshot.
func TestExactlyOnceUnderConcurrentRetries(t *testing.T) {
	masters := redistest.MustStartN(t, 3)
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			for _, mode := range []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock} {
				for _, group := range []bool{true, false} {
					name := fmt.Sprintf("%s/group-commit=%v", mode, group)
					t.Run(name, func(t *testing.T) {
						runExactlyOnce(t, rdb, masters, mode, group)
					})
				}
			}
		})
	}
}

func runExactlyOnce(t *testing.T, rdb redis.UniversalClient, masters []*redistest.Server, mode ledger.Mode, group bool) {
	cfg := ledger.Config{Prefix: fmt.Sprintf("eo%d", time.Now().UnixNano()), Mode: mode, DisableGroupCommit: !group, MaxRetries: 200}
	if mode == ledger.ModeLock {
		cfg.Locker = mustLocker(t, masters, lock.Config{TTL: 5 * time.Second, WaitTimeout: 20 * time.Second})
	}
	l := MustOpen(t, rdb, cfg)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := workload.Run(ctx, libraryTarget{l}, exactlyOnceConfig(seed, ""))
	t.Logf("%d requests: %d applied, %d rejected, %d unknown; %v; stats %+v", rep.Requests, rep.Applied, rep.Rejected, rep.Unknown, rep.Codes, l.Stats())
	require.NoError(t, err)
	require.Positive(t, rep.Applied)
	if mode == ledger.ModeLock && group {
		// Requests that queued while a batch took its lease joined it: the run covered
		// that path (several hundred times a run) with its duplicates and cancellations.
		require.Positive(t, l.Stats().Joined)
	}
}
