package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// apart returns two account IDs starting with prefix that live in different partitions.
func apart(l *ledger.Ledger, prefix string) (string, string) {
	a := prefix + "a"
	for i := 0; ; i++ {
		b := fmt.Sprintf("%sb%d", prefix, i)
		if l.Partition(b) != l.Partition(a) {
			return a, b
		}
	}
}

// fund opens an account and deposits amount USD into it.
func fund(t testing.TB, l *ledger.Ledger, id string, amount int64) {
	t.Helper()
	MustOpenAccount(t, l, id, false)
	if amount > 0 {
		_, err := l.Deposit(context.Background(), ledger.Deposit{Account: id, Currency: "USD", Amount: amount}, ledger.WriteOptions{})
		require.NoError(t, err)
	}
}

func posted(t *testing.T, l *ledger.Ledger, id string) int64 {
	t.Helper()
	return requireConsistent(t, l, id).Balances["USD"].Posted
}

// requireVerified runs Verify and requires every invariant, with no transfer left pending.
func requireVerified(t *testing.T, l *ledger.Ledger) ledger.VerifyReport {
	t.Helper()
	rep, err := l.Verify(context.Background())
	require.NoError(t, err)
	require.True(t, rep.OK(), "%v", rep.Problems)
	require.Zero(t, rep.Pending, "no transfer may stay in flight")
	return rep
}

func TestTransfers(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "xfer"})

			t.Run("same partition: one script, completed", func(t *testing.T) {
				fund(t, l, "shop1..alice", 1000)
				fund(t, l, "shop1..bob", 0)
				require.Equal(t, l.Partition("shop1..alice"), l.Partition("shop1..bob"), "placement tag")
				res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-same", From: "shop1..alice", To: "shop1..bob", Currency: "USD", Amount: 300})
				require.NoError(t, err)
				assert.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
				assert.NotNil(t, res.Transfer.CompletedAt)
				assert.Equal(t, int64(700), posted(t, l, "shop1..alice"))
				assert.Equal(t, int64(300), posted(t, l, "shop1..bob"))
				got, err := l.GetTransfer(ctx, "t-same")
				require.NoError(t, err)
				assert.Equal(t, ledger.TransferCompleted, got.Status)

				again, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-same", From: "shop1..alice", To: "shop1..bob", Currency: "USD", Amount: 300})
				require.NoError(t, err)
				assert.True(t, again.Replayed)
				assert.Equal(t, int64(700), posted(t, l, "shop1..alice"), "a retry moves nothing")
				_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-same", From: "shop1..alice", To: "shop1..bob", Currency: "USD", Amount: 301})
				require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused)
			})

			t.Run("across partitions: debited, credited, completed", func(t *testing.T) {
				from, to := apart(l, "x-")
				fund(t, l, from, 1000)
				fund(t, l, to, 0)
				res, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-cross", From: from, To: to, Currency: "USD", Amount: 250,
					Metadata: map[string]string{"order": "42"}})
				require.NoError(t, err)
				assert.Equal(t, ledger.TransferCompleted, res.Transfer.Status)
				assert.Equal(t, int64(750), posted(t, l, from))
				assert.Equal(t, int64(250), posted(t, l, to))
				got, err := l.GetTransfer(ctx, "t-cross")
				require.NoError(t, err)
				assert.Equal(t, "42", got.Metadata["order"])
				assert.Equal(t, ledger.TransferCompleted, got.Status)
				_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-cross", From: to, To: from, Currency: "USD", Amount: 1})
				require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused, "one ID, another source")
			})

			t.Run("refused up front: nothing lasting written, the refusal stands", func(t *testing.T) {
				from, to := apart(l, "r-")
				fund(t, l, from, 100)
				fund(t, l, to, 0)
				before := keyCount(t, rdb)
				lasting := lastingKeys(t, rdb)
				cases := []struct {
					req      ledger.TransferRequest
					want     error
					recorded bool // refused on what the ledger holds: the refusal is kept under the ID
				}{
					{ledger.TransferRequest{ID: "t-r1", From: from, To: "nobody", Currency: "USD", Amount: 1}, ledger.ErrAccountNotFound, true},
					{ledger.TransferRequest{ID: "t-r2", From: "nobody", To: to, Currency: "USD", Amount: 1}, ledger.ErrAccountNotFound, true},
					{ledger.TransferRequest{ID: "t-r3", From: from, To: to, Currency: "USD", Amount: 101}, ledger.ErrInsufficientFunds, true},
					{ledger.TransferRequest{ID: "t-r4", From: from, To: from, Currency: "USD", Amount: 1}, ledger.ErrInvalid, false},
					{ledger.TransferRequest{ID: "t r5", From: from, To: to, Currency: "USD", Amount: 1}, ledger.ErrInvalid, false},
				}
				for _, c := range cases {
					_, err := l.CreateTransfer(ctx, c.req)
					require.ErrorIs(t, err, c.want, "%+v", c.req)
					assert.False(t, ledger.IsReplayed(err))
					_, err = l.GetTransfer(ctx, "t-r3")
					require.ErrorIs(t, err, ledger.ErrNotFound)
				}
				// Each recorded refusal is its record and the ID's index, both expiring with
				// the idempotency TTL; no money moved and no transfer exists.
				assert.Equal(t, before+2*3, keyCount(t, rdb), "a refusal record and an index per recorded refusal")
				assert.Equal(t, lasting, lastingKeys(t, rdb), "nothing written for good")
				assert.Equal(t, int64(100), posted(t, l, from))

				// Once the causes are gone, the same requests still get their refusals: a
				// first attempt still in flight must not turn into a transfer either.
				fund(t, l, "nobody", 1000)
				_, err := l.Deposit(ctx, ledger.Deposit{Account: from, Currency: "USD", Amount: 1000}, ledger.WriteOptions{})
				require.NoError(t, err)
				for _, c := range cases[:3] {
					_, err := l.CreateTransfer(ctx, c.req)
					require.ErrorIs(t, err, c.want, "%+v again", c.req)
					assert.True(t, ledger.IsReplayed(err), "%s replays its refusal", c.req.ID)
					_, err = l.GetTransfer(ctx, c.req.ID)
					require.ErrorIs(t, err, ledger.ErrNotFound)
				}
				other := cases[2].req
				other.Amount = 100
				_, err = l.CreateTransfer(ctx, other)
				require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused, "the refused ID with another request")
				assert.Equal(t, int64(1100), posted(t, l, from))
				assert.Equal(t, int64(1000), posted(t, l, "nobody"))
			})

			t.Run("to a closed account: 409 up front", func(t *testing.T) {
				from, to := apart(l, "c-")
				fund(t, l, from, 100)
				fund(t, l, to, 0)
				_, err := l.CloseAccount(ctx, to, ledger.WriteOptions{})
				require.NoError(t, err)
				_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-c", From: from, To: to, Currency: "USD", Amount: 1})
				require.ErrorIs(t, err, ledger.ErrAccountClosed)
			})
			requireVerified(t, l)
		})
	}
}

// keyCount returns how many keys the Redis holds (all masters of a Cluster).
func keyCount(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	ctx := context.Background()
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex
		var n int64
		require.NoError(t, c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			k, err := m.DBSize(ctx).Result()
			mu.Lock()
			n += k
			mu.Unlock()
			return err
		}))
		return n
	default:
		n, err := rdb.DBSize(ctx).Result()
		require.NoError(t, err)
		return n
	}
}

// lastingKeys returns how many keys have no expiry.
func lastingKeys(t *testing.T, rdb redis.UniversalClient) int {
	t.Helper()
	ctx := context.Background()
	count := func(ctx context.Context, c *redis.Client) (int, error) {
		n := 0
		iter := c.Scan(ctx, 0, "*", 1000).Iterator()
		for iter.Next(ctx) {
			ttl, err := c.PTTL(ctx, iter.Val()).Result()
			if err != nil {
				return 0, err
			}
			if ttl == -1 {
				n++
			}
		}
		return n, iter.Err()
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex
		total := 0
		require.NoError(t, c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			n, err := count(ctx, m)
			mu.Lock()
			total += n
			mu.Unlock()
			return err
		}))
		return total
	case *redis.Client:
		n, err := count(ctx, c)
		require.NoError(t, err)
		return n
	default:
		t.Fatalf("lastingKeys: unexpected client %T", rdb)
		return 0
	}
}

// debitedMessage returns the outbox message of a transfer's TransferDebited event.
func debitedMessage(t *testing.T, l *ledger.Ledger, account, transfer string) outbox.Message {
	t.Helper()
	return transferMessage(t, l, ledger.EventTransferDebited, account, transfer)
}

// transferMessage returns the outbox message of a transfer's event of type typ on account.
func transferMessage(t *testing.T, l *ledger.Ledger, typ, account, transfer string) outbox.Message {
	t.Helper()
	events, _, err := l.Events(context.Background(), account, 0, ledger.MaxEventsPage)
	require.NoError(t, err)
	for _, e := range events {
		var d ledger.TransferData
		if e.Type == typ && json.Unmarshal(e.Data, &d) == nil && d.TransferID == transfer {
			return projectorMessage(l.Partition(account), e)
		}
	}
	t.Fatalf("no %s of %s on %s", typ, transfer, account)
	return outbox.Message{}
}

func TestTransferSagaRecovery(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "saga"})

	t.Run("the process manager finishes a transfer a crash left debited", func(t *testing.T) {
		from, to := apart(l, "pm-")
		fund(t, l, from, 500)
		fund(t, l, to, 0)
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-pm", From: from, To: to, Currency: "USD", Amount: 200}))
		got, err := l.GetTransfer(ctx, "t-pm")
		require.NoError(t, err)
		require.Equal(t, ledger.TransferPending, got.Status)
		rep, err := l.Verify(ctx)
		require.NoError(t, err)
		require.True(t, rep.OK(), "conserved while in flight: %v", rep.Problems)
		assert.Equal(t, 1, rep.Pending)
		assert.Zero(t, rep.InFlight["USD"].Cmp(bigInt(200)))

		msg := debitedMessage(t, l, from, "t-pm")
		pm := l.TransferManager()
		require.NoError(t, pm.Deliver(ctx, []outbox.Message{msg, msg}), "seen twice")
		require.NoError(t, pm.Deliver(ctx, []outbox.Message{msg}), "and again later")
		got, err = l.GetTransfer(ctx, "t-pm")
		require.NoError(t, err)
		assert.Equal(t, ledger.TransferCompleted, got.Status)
		assert.Equal(t, int64(300), posted(t, l, from))
		assert.Equal(t, int64(200), posted(t, l, to), "credited exactly once")
		requireVerified(t, l)
	})

	t.Run("a destination closed between debit and credit refunds, exactly once", func(t *testing.T) {
		from, to := apart(l, "rf-")
		fund(t, l, from, 500)
		fund(t, l, to, 0)
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-rf", From: from, To: to, Currency: "USD", Amount: 120}))
		_, err := l.CloseAccount(ctx, to, ledger.WriteOptions{})
		require.NoError(t, err)

		msg := debitedMessage(t, l, from, "t-rf")
		pm := l.TransferManager()
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ { // the request, the manager and the sweep may all drive it
			wg.Add(1)
			go func() { defer wg.Done(); assert.NoError(t, pm.Deliver(ctx, []outbox.Message{msg})) }()
		}
		wg.Wait()
		require.NoError(t, pm.Deliver(ctx, []outbox.Message{msg, msg}))
		got, err := l.GetTransfer(ctx, "t-rf")
		require.NoError(t, err)
		assert.Equal(t, ledger.TransferRefunded, got.Status)
		assert.Equal(t, "destination account closed", got.Reason)
		assert.NotNil(t, got.CompletedAt)
		assert.Equal(t, int64(500), posted(t, l, from), "source restored")
		acc := requireConsistent(t, l, to)
		assert.Equal(t, ledger.StatusClosed, acc.Status)
		assert.Zero(t, acc.Balances["USD"].Posted)
		events, _, err := l.Events(ctx, from, 0, ledger.MaxEventsPage)
		require.NoError(t, err)
		refunds := 0
		for _, e := range events {
			if e.Type == ledger.EventTransferRefunded {
				refunds++
			}
		}
		assert.Equal(t, 1, refunds)
		requireVerified(t, l)
	})

	t.Run("the sweep reports and finishes a transfer stuck pending", func(t *testing.T) {
		from, to := apart(l, "sw-")
		fund(t, l, from, 50)
		fund(t, l, to, 0)
		require.NoError(t, l.StartTransfer(ctx, ledger.TransferRequest{ID: "t-sw", From: from, To: to, Currency: "USD", Amount: 50}))
		stop := runSweeper(t, l, ledger.SweeperConfig{TransferInterval: 20 * time.Millisecond, StuckAfter: time.Millisecond})
		require.Eventually(t, func() bool {
			got, err := l.GetTransfer(ctx, "t-sw")
			return err == nil && got.Status == ledger.TransferCompleted
		}, 10*time.Second, 10*time.Millisecond)
		stop()
		assert.Positive(t, l.Stats().TransfersStuck)
		requireVerified(t, l)
	})
}

func TestDuplicateTransferIDsFromTwoProcesses(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			procs := []*ledger.Ledger{MustOpen(t, rdb, ledger.Config{Prefix: "dupx"}), MustOpen(t, rdb, ledger.Config{Prefix: "dupx"})}
			l := procs[0]
			from, to := apart(l, "d-")
			fund(t, l, from, 10_000)
			fund(t, l, to, 0)
			fund(t, l, "g1..a", 10_000)
			fund(t, l, "g1..b", 0)
			for _, c := range []struct{ id, from, to string }{{"t-dup-cross", from, to}, {"t-dup-same", "g1..a", "g1..b"}} {
				var wg sync.WaitGroup
				results := make([]ledger.TransferResult, 32)
				errs := make([]error, 32)
				for i := range results {
					wg.Add(1)
					go func() {
						defer wg.Done()
						results[i], errs[i] = procs[i%2].CreateTransfer(ctx, ledger.TransferRequest{ID: c.id, From: c.from, To: c.to, Currency: "USD", Amount: 700})
					}()
				}
				wg.Wait()
				for i := range results {
					require.NoError(t, errs[i])
					assert.Equal(t, c.id, results[i].Transfer.ID)
				}
				assert.Equal(t, int64(9_300), posted(t, l, c.from), "one transfer")
				assert.Equal(t, int64(700), posted(t, l, c.to))
			}
			requireVerified(t, l)
		})
	}
}

// TestTransfersConserveMoney races transfers in both directions (same and cross partition),
// deposits and withdrawals over a handful of accounts in both modes, then checks
// conservation, no negative balance and replay = snapshot. In lock mode the same-partition
// transfers take two leases, in a global order: this deadlocks if the order is not kept.
func TestTransfersConserveMoney(t *testing.T) {
	masters := redistest.MustStartN(t, 3)
	rdb := redistest.MustStart(t).Client()
	for _, mode := range []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := ledger.Config{Prefix: "cons-" + string(mode), Mode: mode, MaxRetries: 200}
			if mode == ledger.ModeLock {
				cfg.Locker = mustLocker(t, masters, lock.Config{TTL: 5 * time.Second, WaitTimeout: 20 * time.Second})
			}
			l := MustOpen(t, rdb, cfg)
			ctx := context.Background()
			accounts := []string{"p1..a", "p1..b", "p1..c", "q", "r", "s"}
			for _, a := range accounts {
				fund(t, l, a, 1_000)
			}
			var wg sync.WaitGroup
			for w := 0; w < 16; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					for i := 0; i < 40; i++ {
						from, to := accounts[rng.IntN(len(accounts))], accounts[rng.IntN(len(accounts))]
						var err error
						switch {
						case from == to && rng.IntN(2) == 0:
							_, err = l.Deposit(ctx, ledger.Deposit{Account: from, Currency: "USD", Amount: int64(rng.IntN(50) + 1)}, ledger.WriteOptions{})
						case from == to:
							_, err = l.Withdraw(ctx, ledger.Withdraw{Account: from, Currency: "USD", Amount: int64(rng.IntN(50) + 1)}, ledger.WriteOptions{})
						default:
							_, err = l.CreateTransfer(ctx, ledger.TransferRequest{ID: fmt.Sprintf("w%d-%d", w, i), From: from, To: to, Currency: "USD", Amount: int64(rng.IntN(200) + 1)})
						}
						if err != nil {
							assert.ErrorIs(t, err, ledger.ErrInsufficientFunds)
						}
					}
				}()
			}
			wg.Wait()
			rep := requireVerified(t, l)
			assert.Positive(t, rep.Transfers)
		})
	}
}

func bigInt(n int64) *big.Int { return big.NewInt(n) }
