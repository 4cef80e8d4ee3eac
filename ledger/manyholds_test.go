package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// TestManyPendingHolds keeps 5,000 pending holds on one account — a platform's account
// with a day of card authorizations — and goes on writing it. Each hold is a field of the
// account's snapshot hash. A commit used to rewrite every field and hand them to one
// HSET through Lua's unpack, whose stack limit (~8,000 values) failed every write to the
// account from ~4,000 holds on ("too many results to unpack"): deposits, captures, voids and
// the expiry that would have shrunk it. A commit now writes the fields it changes (and
// in slices of a thousand: TestCommitWritesSnapshotsOfAnySize); closing the account
// deletes the 4,998 fields left in one commit. A write also reads no more than it needs:
// a capture decides on the snapshot its process's last commit left, and reads only its
// hold's record.
func TestManyPendingHolds(t *testing.T) {
	const holds, perBatch = 5_000, 1_000
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			var mu sync.Mutex
			now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
			clock := func() time.Time {
				mu.Lock()
				defer mu.Unlock()
				return now
			}
			// Two processes race on one account in churn: room for their retries.
			l := MustOpen(t, rdb, ledger.Config{Prefix: "manyholds", Clock: clock, MaxRetries: 200})
			fund(t, l, "a", 1_000_000)

			for n := 0; n < holds; n += perBatch {
				ops := make([]ledger.BatchOp, perBatch)
				for i := range ops {
					ops[i] = ledger.BatchOp{Type: ledger.OpHold, ID: fmt.Sprintf("h%d", n+i), Account: "a", Currency: "USD", Amount: 1, Timeout: time.Hour}
				}
				res, _, err := l.Batch(ctx, true, ops, ledger.WriteOptions{})
				require.NoError(t, err, "after %d holds", n)
				for i, r := range res {
					require.NoError(t, r.Err, "hold %d", n+i)
				}
			}

			in, reported := redistest.InfoSum(t, rdb, "stats", "total_net_input_bytes")
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
			require.NoError(t, err)
			if reported { // not by the embedded Redis
				// A full rewrite sends ~50 bytes per hold (~250 KB); the deposit's own
				// fields, event and token are well under 10 KB with its read.
				after, _ := redistest.InfoSum(t, rdb, "stats", "total_net_input_bytes")
				assert.Less(t, after-in, 10_000.0, "bytes Redis received for one deposit to an account with %d holds", holds)
			}
			out, _ := redistest.InfoSum(t, rdb, "stats", "total_net_output_bytes")
			hits, mixed := l.Stats().SnapshotHits, l.MixedPrereads()
			_, err = l.CaptureHold(ctx, "a", "h0", 0, "", ledger.WriteOptions{})
			require.NoError(t, err)
			assert.Equal(t, hits+1, l.Stats().SnapshotHits, "the capture decided on the cached snapshot")
			assert.Equal(t, mixed, l.MixedPrereads(), "no request brought a snapshot of its own")
			if reported {
				// The capture reads its hold's record but decides on the snapshot its
				// process's last commit left: reading the snapshot would send ~250 KB.
				after, _ := redistest.InfoSum(t, rdb, "stats", "total_net_output_bytes")
				assert.Less(t, after-out, 10_000.0, "bytes Redis sent for one capture on an account with %d holds", holds)
			}
			_, err = l.VoidHold(ctx, "a", "h1", ledger.WriteOptions{})
			require.NoError(t, err)
			acc := requireConsistent(t, l, "a")
			assert.Equal(t, ledger.Balance{Posted: 1_000_004, Held: holds - 2, Available: 1_000_004 - (holds - 2)}, acc.Balances["USD"])

			churn(t, clock, rdb, l, holds)
			acc = requireConsistent(t, l, "a")

			// The holds expire; the account is emptied and closed: one commit expires
			// the holds left and deletes their fields.
			mu.Lock()
			now = now.Add(2 * time.Hour)
			mu.Unlock()
			_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "a", Currency: "USD", Amount: acc.Balances["USD"].Posted}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.CloseAccount(ctx, "a", ledger.WriteOptions{})
			require.NoError(t, err)
			acc = requireConsistent(t, l, "a")
			assert.Equal(t, ledger.StatusClosed, acc.Status)
			assert.Zero(t, acc.Balances["USD"].Held)
			left, err := l.HoldFields(ctx, "a")
			require.NoError(t, err)
			assert.Zero(t, left, "the snapshot keeps no field of an expired hold")
			requireVerified(t, l)
		})
	}
}

// churn writes account "a" of l, which has the pending holds h2..h<holds-1>, from 8
// workers through l and a second process on the same keys (whose cached snapshots go
// stale, so commits conflict and retry): deposits and withdrawals, half of them reusing
// one of 20 Idempotency-Keys; captures and voids of 200 of the holds, racing for the same
// ones; new holds reusing 20 IDs; one call in eight given up part way. Each hold must be
// resolved at most once, both processes must read the account as its events replay, and
// every failure must be a refusal or the cancellation.
func churn(t *testing.T, clock func() time.Time, rdb redis.UniversalClient, l *ledger.Ledger, holds int) {
	t.Helper()
	other := MustOpen(t, rdb, ledger.Config{Prefix: "manyholds", Clock: clock, MaxRetries: 200})
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			lw := []*ledger.Ledger{l, other}[w%2]
			for range 15 {
				ctx, cancel := context.WithCancel(context.Background())
				if rng.IntN(8) == 0 {
					time.AfterFunc(time.Duration(rng.IntN(3000))*time.Microsecond, cancel)
				}
				var opts ledger.WriteOptions
				if rng.IntN(2) == 0 {
					opts.IdempotencyKey = fmt.Sprintf("k%d", rng.IntN(20))
				}
				hold := fmt.Sprintf("h%d", 2+rng.IntN(min(200, holds-2)))
				var err error
				switch rng.IntN(5) {
				case 0:
					_, err = lw.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 1 + rng.Int64N(100)}, opts)
				case 1:
					_, err = lw.Withdraw(ctx, ledger.Withdraw{Account: "a", Currency: "USD", Amount: 1 + rng.Int64N(100)}, opts)
				case 2:
					_, err = lw.CaptureHold(ctx, "a", hold, 0, "", opts)
				case 3:
					_, err = lw.VoidHold(ctx, "a", hold, opts)
				default:
					_, err = lw.PlaceHold(ctx, ledger.PlaceHold{Account: "a", ID: fmt.Sprintf("x%d", rng.IntN(20)), Currency: "USD", Amount: 1, Timeout: time.Hour})
				}
				cancel()
				if err != nil && !errors.Is(err, ledger.ErrHoldNotPending) && !errors.Is(err, ledger.ErrIdempotencyKeyReused) &&
					!errors.Is(err, context.Canceled) {
					t.Errorf("worker %d: %v", w, err)
				}
			}
		})
	}
	wg.Wait()
	for h, res := range resolutions(t, l, "a") {
		assert.Len(t, res, 1, "hold %s resolved once: %v", h, res)
	}
	requireConsistent(t, other, "a")
}
