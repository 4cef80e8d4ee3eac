package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// TestStaleAttemptAfterRefusal is the chaos test's finding, made deterministic: a client's
// first attempt is stuck in one process (here: after its read, before its commit); the
// client gives up, retries through another process and is told no (insufficient funds);
// money arrives; then the first attempt wakes up. It must replay the refusal, not apply on
// the fresh balance — the client has its final answer. Two Ledgers on one Redis play the
// two processes, for a keyed withdrawal, a hold and a transfer across partitions.
func TestStaleAttemptAfterRefusal(t *testing.T) {
	cases := []struct {
		name string
		// do sends the request with its client-chosen key or ID through l.
		do func(ctx context.Context, l *ledger.Ledger, from, to string) error
	}{
		{"withdrawal with an Idempotency-Key", func(ctx context.Context, l *ledger.Ledger, from, _ string) error {
			_, err := l.Withdraw(ctx, ledger.Withdraw{Account: from, Currency: "USD", Amount: 100}, ledger.WriteOptions{IdempotencyKey: "w-1"})
			return err
		}},
		{"hold with an id", func(ctx context.Context, l *ledger.Ledger, from, _ string) error {
			_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: from, ID: "h-1", Currency: "USD", Amount: 100, Timeout: time.Minute})
			return err
		}},
		{"transfer across partitions with an id", func(ctx context.Context, l *ledger.Ledger, from, to string) error {
			_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-1", From: from, To: to, Currency: "USD", Amount: 100})
			return err
		}},
	}
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					cfg := ledger.Config{Prefix: fmt.Sprintf("stale%d", i), Partitions: 8}
					first, second := MustOpen(t, rdb, cfg), MustOpen(t, rdb, cfg)
					from := "src"
					to := accountIn(first, "dst-", (first.Partition(from)+1)%8)
					fund(t, first, from, 100)
					fund(t, first, to, 0)

					held, release := holdCommit(t, first, 1)
					stale := make(chan error, 1)
					go func() { stale <- c.do(ctx, first, from, to) }()
					select {
					case <-held: // read 100 available, decided to go ahead, not committed yet
					case <-ctx.Done():
						t.Fatal("the first attempt never reached its commit")
					}

					// Meanwhile, through the other process: money leaves, the retry is refused,
					// money arrives.
					_, err := second.Withdraw(ctx, ledger.Withdraw{Account: from, Currency: "USD", Amount: 60}, ledger.WriteOptions{})
					require.NoError(t, err)
					err = c.do(ctx, second, from, to)
					require.ErrorIs(t, err, ledger.ErrInsufficientFunds, "the retry: 40 available")
					_, err = second.Deposit(ctx, ledger.Deposit{Account: from, Currency: "USD", Amount: 1000}, ledger.WriteOptions{})
					require.NoError(t, err)

					release()
					err = <-stale
					require.ErrorIs(t, err, ledger.ErrInsufficientFunds, "the first attempt, woken after its client was refused")
					assert.True(t, ledger.IsReplayed(err))

					acc := requireConsistent(t, first, from)
					assert.Equal(t, ledger.Balance{Posted: 1040, Available: 1040}, acc.Balances["USD"], "nothing withdrawn, held or transferred")
					assert.Equal(t, int64(0), requireConsistent(t, first, to).Balances["USD"].Posted)
					_, err = second.GetTransfer(ctx, "t-1")
					require.ErrorIs(t, err, ledger.ErrNotFound)
					_, err = second.Hold(ctx, from, "h-1")
					require.ErrorIs(t, err, ledger.ErrNotFound)

					// And later still, with the money there: the same answer.
					err = c.do(ctx, second, from, to)
					require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
					assert.True(t, ledger.IsReplayed(err))
					assert.Equal(t, int64(1040), requireConsistent(t, first, from).Balances["USD"].Posted)
				})
			}
		})
	}
}

// TestRefusalRecordsExpire: a refusal is kept as long as an idempotency key, then the key
// (or ID) may be used again.
func TestRefusalRecordsExpire(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "refexp", Partitions: 4, IdempotencyTTL: time.Second})
			from := "a"
			to := accountIn(l, "b-", (l.Partition(from)+1)%4)
			fund(t, l, from, 10)
			fund(t, l, to, 0)
			wd := ledger.Withdraw{Account: from, Currency: "USD", Amount: 50}
			tr := ledger.TransferRequest{ID: "t-exp", From: from, To: to, Currency: "USD", Amount: 50}
			_, err := l.Withdraw(ctx, wd, ledger.WriteOptions{IdempotencyKey: "k"})
			require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
			_, err = l.CreateTransfer(ctx, tr)
			require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
			_, err = l.Deposit(ctx, ledger.Deposit{Account: from, Currency: "USD", Amount: 100}, ledger.WriteOptions{})
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				_, err := l.Withdraw(ctx, wd, ledger.WriteOptions{IdempotencyKey: "k"})
				return err == nil
			}, 20*time.Second, 50*time.Millisecond, "the key is free once its refusal expired")
			require.Eventually(t, func() bool {
				_, err := l.CreateTransfer(ctx, tr)
				return err == nil
			}, 20*time.Second, 50*time.Millisecond, "the transfer ID is free once its refusal expired")
			got, err := l.GetTransfer(ctx, "t-exp")
			require.NoError(t, err, "the transfer made with the ID is found: its index no longer expires")
			assert.Equal(t, from, got.From)
			ttl, err := rdb.PTTL(ctx, l.TransferIndexKey("t-exp")).Result()
			require.NoError(t, err)
			assert.Equal(t, time.Duration(-1), ttl, "the index of a made transfer is kept for good")
			assert.Equal(t, int64(10+100-50-50), requireConsistent(t, l, from).Balances["USD"].Posted)
		})
	}
}

// TestAtomicBatchKeepsItsRefusal: an atomic batch refused with an Idempotency-Key keeps its
// refusal (which operation failed, and why); the same batch again replays it, even once the
// money is there, and applies nothing.
func TestAtomicBatchKeepsItsRefusal(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "refbatch"})
			fund(t, l, "s1..a", 500)
			fund(t, l, "s1..b", 0)
			ops := []ledger.BatchOp{
				{Type: ledger.OpDeposit, Account: "s1..b", Currency: "USD", Amount: 10},
				{Type: ledger.OpTransfer, ID: "bt-1", From: "s1..a", To: "s1..b", Currency: "USD", Amount: 600},
			}
			key := ledger.WriteOptions{IdempotencyKey: "batch-r"}
			res, replayed, err := l.Batch(ctx, true, ops, key)
			require.NoError(t, err)
			assert.False(t, replayed)
			require.ErrorIs(t, res[0].Err, ledger.ErrBatchAborted)
			require.ErrorIs(t, res[1].Err, ledger.ErrInsufficientFunds)

			_, err = l.Deposit(ctx, ledger.Deposit{Account: "s1..a", Currency: "USD", Amount: 1000}, ledger.WriteOptions{})
			require.NoError(t, err)
			again, replayed, err := l.Batch(ctx, true, ops, key)
			require.NoError(t, err)
			assert.True(t, replayed, "the batch's refusal, replayed")
			require.ErrorIs(t, again[0].Err, ledger.ErrBatchAborted)
			require.ErrorIs(t, again[1].Err, ledger.ErrInsufficientFunds)
			assert.Equal(t, res[1].Err.Error(), again[1].Err.Error())
			assert.Equal(t, int64(1500), requireConsistent(t, l, "s1..a").Balances["USD"].Posted)
			assert.Equal(t, int64(0), requireConsistent(t, l, "s1..b").Balances["USD"].Posted)
			_, err = l.GetTransfer(ctx, "bt-1")
			require.ErrorIs(t, err, ledger.ErrNotFound)

			// Without the key the same operations are a new request, decided on today's state.
			res, _, err = l.Batch(ctx, true, ops, ledger.WriteOptions{})
			require.NoError(t, err)
			require.NoError(t, res[0].Err)
			require.NoError(t, res[1].Err)
			assert.Equal(t, int64(900), requireConsistent(t, l, "s1..a").Balances["USD"].Posted)
		})
	}
}

// TestUnmadeTransferKeepsItsID: a transfer whose request claimed its ID and then failed
// before its commit (here: every attempt lost the version check to another process) keeps
// the ID claimed for its source until the idempotency TTL, so that another source cannot
// take the ID while a duplicate of the request may still make the transfer; the source
// itself can, and then keeps the ID for good.
func TestUnmadeTransferKeepsItsID(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	cfg := ledger.Config{Prefix: "unmade", Partitions: 4, MaxRetries: 2}
	l, other := MustOpen(t, rdb, cfg), MustOpen(t, rdb, cfg)
	src, thief := "src", "thief"
	dst := accountIn(l, "dst-", (l.Partition(src)+1)%4)
	for _, id := range []string{src, thief, dst} {
		fund(t, l, id, 100)
	}
	// Between every read and commit of l, the other process writes the source.
	l.SetBeforeCommit(func() {
		_, err := other.Deposit(ctx, ledger.Deposit{Account: src, Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		assert.NoError(t, err)
	})
	req := ledger.TransferRequest{ID: "t-unmade", From: src, To: dst, Currency: "USD", Amount: 10}
	_, err := l.CreateTransfer(ctx, req)
	require.ErrorIs(t, err, ledger.ErrVersionConflict, "every attempt conflicted: nothing committed")
	l.SetBeforeCommit(nil)

	stolen := req
	stolen.From = thief
	_, err = l.CreateTransfer(ctx, stolen)
	require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused, "another source cannot take the ID while a duplicate may still make it")
	ttl, err := rdb.PTTL(ctx, l.TransferIndexKey(req.ID)).Result()
	require.NoError(t, err)
	assert.Positive(t, ttl, "the unmade transfer's claim expires")

	res, err := l.CreateTransfer(ctx, req)
	require.NoError(t, err, "the source's retry makes it")
	assert.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
	ttl, err = rdb.PTTL(ctx, l.TransferIndexKey(req.ID)).Result()
	require.NoError(t, err)
	assert.Equal(t, time.Duration(-1), ttl, "a made transfer keeps its ID for good")
	got, err := l.GetTransfer(ctx, req.ID)
	require.NoError(t, err)
	assert.Equal(t, src, got.From)
}

// TestRefusedCaptureReplaysItsAnswer: a capture of a hold never placed is 404, recorded
// under its key like any refusal, and stays 404 when replayed after a hold with that ID was
// placed: the answer is decided once, in the commit (the hold record is probed with the
// snapshot), not looked up again after it.
func TestRefusedCaptureReplaysItsAnswer(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "refcap"})
			fund(t, l, "a", 100)
			key := ledger.WriteOptions{IdempotencyKey: "cap-1"}
			_, err := l.CaptureHold(ctx, "a", "h-late", 0, "", key)
			require.ErrorIs(t, err, ledger.ErrNotFound)
			assert.False(t, ledger.IsReplayed(err))
			first := err.Error()
			_, err = l.VoidHold(ctx, "a", "h-late", ledger.WriteOptions{IdempotencyKey: "void-1"})
			require.ErrorIs(t, err, ledger.ErrNotFound)

			_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: "a", ID: "h-late", Currency: "USD", Amount: 10, Timeout: time.Minute})
			require.NoError(t, err)
			_, err = l.CaptureHold(ctx, "a", "h-late", 0, "", key)
			require.ErrorIs(t, err, ledger.ErrNotFound, "the same request gets the same answer")
			assert.True(t, ledger.IsReplayed(err))
			assert.Equal(t, first, err.Error())
			_, err = l.VoidHold(ctx, "a", "h-late", ledger.WriteOptions{IdempotencyKey: "void-1"})
			require.ErrorIs(t, err, ledger.ErrNotFound)
			assert.True(t, ledger.IsReplayed(err))

			h, err := l.Hold(ctx, "a", "h-late")
			require.NoError(t, err)
			assert.Equal(t, ledger.HoldPending, h.Status, "the replays touched nothing")
			_, err = l.VoidHold(ctx, "a", "h-late", ledger.WriteOptions{})
			require.NoError(t, err, "a new request is decided on today's state")
			_, err = l.VoidHold(ctx, "a", "h-late", ledger.WriteOptions{})
			require.ErrorIs(t, err, ledger.ErrHoldNotPending, "placed, then resolved: 409, not 404")
		})
	}
}
