package ledger_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/internal/redisx"
	"github.com/tally-ledger/tally/ledger"
)

// TestManyPendingHolds keeps 5,000 pending holds on one account — a platform's account
// with a day of card authorizations — and goes on writing it. Each hold is a field of the
// account's snapshot hash. A commit used to rewrite every field and hand them to one
// HSET through Lua's unpack, whose stack limit (~8,000 values) failed every write to the
// account from ~4,000 holds on ("too many results to unpack"): deposits, captures, voids and
// the expiry that would have shrunk it. A commit now writes the fields it changes (and
// in slices of a thousand: TestCommitWritesSnapshotsOfAnySize); closing the account
// deletes the 4,998 fields left in one commit.
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
			l := MustOpen(t, rdb, ledger.Config{Prefix: "manyholds", Clock: clock})
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

			in := netInput(ctx, t, rdb)
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "a", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
			require.NoError(t, err)
			if in != nil {
				// A full rewrite sends ~50 bytes per hold (~250 KB); the deposit's own
				// fields, event and token are well under 10 KB with its read.
				sent := *netInput(ctx, t, rdb) - *in
				assert.Less(t, sent, int64(10_000), "bytes Redis received for one deposit to an account with %d holds", holds)
			}
			_, err = l.CaptureHold(ctx, "a", "h0", 0, "", ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.VoidHold(ctx, "a", "h1", ledger.WriteOptions{})
			require.NoError(t, err)
			acc := requireConsistent(t, l, "a")
			assert.Equal(t, ledger.Balance{Posted: 1_000_004, Held: holds - 2, Available: 1_000_004 - (holds - 2)}, acc.Balances["USD"])

			// The holds expire; the account is emptied and closed: one commit expires
			// the holds left and deletes their fields.
			mu.Lock()
			now = now.Add(2 * time.Hour)
			mu.Unlock()
			_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "a", Currency: "USD", Amount: 1_000_004}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.CloseAccount(ctx, "a", ledger.WriteOptions{})
			require.NoError(t, err)
			acc = requireConsistent(t, l, "a")
			assert.Equal(t, ledger.StatusClosed, acc.Status)
			assert.Zero(t, acc.Balances["USD"].Held)
			assert.Zero(t, holdFields(ctx, t, rdb), "the snapshot keeps no field of an expired hold")
			requireVerified(t, l)
		})
	}
}

// netInput returns the bytes every master of rdb has received so far (INFO stats), or nil
// where INFO does not report it (the embedded Redis).
func netInput(ctx context.Context, t *testing.T, rdb redis.UniversalClient) *int64 {
	t.Helper()
	var (
		mu    sync.Mutex
		total int64
		found = true
	)
	require.NoError(t, redisx.ForEachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "stats").Result()
		if err != nil {
			return err
		}
		v, ok := redistest.InfoNumber(info, "total_net_input_bytes")
		mu.Lock()
		defer mu.Unlock()
		total += int64(v)
		found = found && ok
		return nil
	}))
	if !found {
		return nil
	}
	return &total
}

// holdFields counts the hold fields ("H:…") of every snapshot hash of the manyholds
// ledger.
func holdFields(ctx context.Context, t *testing.T, rdb redis.UniversalClient) int {
	t.Helper()
	var (
		mu sync.Mutex
		n  int
	)
	require.NoError(t, redisx.ForEachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		keys, err := c.Keys(ctx, "manyholds:*:acct:a").Result()
		if err != nil {
			return err
		}
		for _, k := range keys {
			fields, err := c.HKeys(ctx, k).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			for _, f := range fields {
				if strings.HasPrefix(f, "H:") {
					n++
				}
			}
			mu.Unlock()
		}
		return nil
	}))
	return n
}
