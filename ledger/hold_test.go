package ledger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func decodeHold(t *testing.T, rc ledger.Receipt) ledger.Hold {
	t.Helper()
	var h ledger.Hold
	require.NoError(t, json.Unmarshal(rc.Body, &h))
	return h
}

func balance(t *testing.T, l *ledger.Ledger, id string) ledger.Balance {
	t.Helper()
	return requireConsistent(t, l, id).Balances["USD"]
}

// TestTwoPhase follows TigerBeetle's rules for pending transfers: a hold is resolved at most
// once (capture, void or expiry), a capture takes at most what is held, an expired hold can
// never be captured, and nothing changes when a rule is broken.
func TestTwoPhase(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			clock := newFakeClock()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "hold", Clock: clock.Now})
			none := ledger.WriteOptions{}
			n := 0
			// place opens a funded account with a fresh pending hold of 400 out of 1000.
			place := func(t *testing.T) (string, string) {
				n++
				acct, hold := fmt.Sprintf("h%d", n), fmt.Sprintf("hold%d", n)
				fund(t, l, acct, 1000)
				rc, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: hold, Currency: "USD", Amount: 400, Timeout: time.Minute})
				require.NoError(t, err)
				h := decodeHold(t, rc)
				assert.Equal(t, ledger.HoldPending, h.Status)
				assert.Equal(t, clock.Now().Add(time.Minute), h.ExpiresAt)
				assert.Equal(t, ledger.Balance{Posted: 1000, Held: 400, Available: 600}, balance(t, l, acct))
				return acct, hold
			}
			// unchanged requires that a refused action left the account as it was.
			unchanged := func(t *testing.T, acct string, want ledger.Balance, version int64) {
				t.Helper()
				acc := requireConsistent(t, l, acct)
				assert.Equal(t, want, acc.Balances["USD"])
				assert.Equal(t, version, acc.Version)
			}
			version := func(acct string) int64 {
				acc, err := l.Account(ctx, acct)
				require.NoError(t, err)
				return acc.Version
			}

			t.Run("available excludes held amounts", func(t *testing.T) {
				acct, _ := place(t)
				_, err := l.Withdraw(ctx, ledger.Withdraw{Account: acct, Currency: "USD", Amount: 601}, none)
				require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
				_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: "more", Currency: "USD", Amount: 601, Timeout: time.Minute})
				require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
			})
			t.Run("capture in full, then capture or void again", func(t *testing.T) {
				acct, hold := place(t)
				rc, err := l.CaptureHold(ctx, acct, hold, 0, "", none)
				require.NoError(t, err)
				h := decodeHold(t, rc)
				assert.Equal(t, ledger.HoldCaptured, h.Status)
				assert.Equal(t, int64(400), h.Captured)
				placed, err := l.Hold(ctx, acct, hold)
				require.NoError(t, err)
				assert.Equal(t, placed.CreatedAt, h.CreatedAt, "the capture's answer keeps the hold's creation time")
				assert.False(t, h.CreatedAt.IsZero())
				want := ledger.Balance{Posted: 600, Held: 0, Available: 600}
				v := version(acct)
				unchanged(t, acct, want, v)
				_, err = l.CaptureHold(ctx, acct, hold, 0, "", none)
				require.ErrorIs(t, err, ledger.ErrHoldNotPending, "capture twice")
				_, err = l.VoidHold(ctx, acct, hold, none)
				require.ErrorIs(t, err, ledger.ErrHoldNotPending, "void after capture")
				unchanged(t, acct, want, v)
			})
			t.Run("partial capture releases the rest", func(t *testing.T) {
				acct, hold := place(t)
				rc, err := l.CaptureHold(ctx, acct, hold, 150, "", none)
				require.NoError(t, err)
				assert.Equal(t, int64(150), decodeHold(t, rc).Captured)
				unchanged(t, acct, ledger.Balance{Posted: 850, Held: 0, Available: 850}, version(acct))
				got, err := l.Hold(ctx, acct, hold)
				require.NoError(t, err)
				assert.Equal(t, ledger.HoldCaptured, got.Status)
				assert.NotNil(t, got.ResolvedAt)
			})
			t.Run("void, then void or capture again", func(t *testing.T) {
				acct, hold := place(t)
				_, err := l.VoidHold(ctx, acct, hold, none)
				require.NoError(t, err)
				want := ledger.Balance{Posted: 1000, Held: 0, Available: 1000}
				v := version(acct)
				_, err = l.VoidHold(ctx, acct, hold, none)
				require.ErrorIs(t, err, ledger.ErrHoldNotPending, "void twice")
				_, err = l.CaptureHold(ctx, acct, hold, 0, "", none)
				require.ErrorIs(t, err, ledger.ErrHoldNotPending, "capture after void")
				unchanged(t, acct, want, v)
			})
			t.Run("capture above the held amount", func(t *testing.T) {
				acct, hold := place(t)
				v := version(acct)
				_, err := l.CaptureHold(ctx, acct, hold, 401, "", none)
				require.ErrorIs(t, err, ledger.ErrAmountExceedsHold)
				unchanged(t, acct, ledger.Balance{Posted: 1000, Held: 400, Available: 600}, v)
			})
			t.Run("expiry is exact at read time and final", func(t *testing.T) {
				acct, hold := place(t)
				v := version(acct)
				clock.Advance(time.Minute - time.Millisecond)
				assert.Equal(t, int64(400), balance(t, l, acct).Held, "a millisecond before expiry it still holds")
				clock.Advance(time.Millisecond)
				acc, err := l.Account(ctx, acct)
				require.NoError(t, err)
				assert.Equal(t, ledger.Balance{Posted: 1000, Held: 0, Available: 1000}, acc.Balances["USD"], "expired: no longer held, with no event yet")
				assert.Equal(t, v, acc.Version)
				got, err := l.Hold(ctx, acct, hold)
				require.NoError(t, err)
				assert.Equal(t, ledger.HoldExpired, got.Status)
				_, err = l.CaptureHold(ctx, acct, hold, 0, "", none)
				require.ErrorIs(t, err, ledger.ErrHoldNotPending, "capture after expiry")
				_, err = l.VoidHold(ctx, acct, hold, none)
				require.ErrorIs(t, err, ledger.ErrHoldNotPending, "void after expiry")
				_, err = l.Withdraw(ctx, ledger.Withdraw{Account: acct, Currency: "USD", Amount: 1000}, none)
				require.NoError(t, err, "the expired hold's amount is available again")
			})
			t.Run("unknown hold", func(t *testing.T) {
				acct, _ := place(t)
				other, _ := place(t)
				before := keyCount(t, rdb)
				_, err := l.CaptureHold(ctx, acct, "nope", 0, "", none)
				require.ErrorIs(t, err, ledger.ErrNotFound)
				_, err = l.CaptureHold(ctx, acct, "nope", 0, other, none)
				require.ErrorIs(t, err, ledger.ErrNotFound, "capture to another account")
				_, err = l.VoidHold(ctx, acct, "nope", none)
				require.ErrorIs(t, err, ledger.ErrNotFound)
				_, err = l.CaptureHold(ctx, "nobody", "nope", 0, "", none)
				require.ErrorIs(t, err, ledger.ErrNotFound, "a hold of an unknown account")
				assert.Equal(t, before, keyCount(t, rdb), "no key written")
				_, err = l.Hold(ctx, acct, "nope")
				require.ErrorIs(t, err, ledger.ErrNotFound)
			})
			t.Run("the hold ID is its idempotency key", func(t *testing.T) {
				acct, hold := place(t)
				rc, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: hold, Currency: "USD", Amount: 400, Timeout: time.Minute})
				require.NoError(t, err)
				assert.True(t, rc.Replayed)
				_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: hold, Currency: "USD", Amount: 1, Timeout: time.Minute})
				require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused)
				assert.Equal(t, int64(400), balance(t, l, acct).Held)
			})
			t.Run("concurrent capture and void: exactly one wins", func(t *testing.T) {
				for i := 0; i < 10; i++ {
					acct, hold := place(t)
					var wins atomic.Int64
					var wg sync.WaitGroup
					for j := 0; j < 6; j++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							var err error
							if j%2 == 0 {
								_, err = l.CaptureHold(ctx, acct, hold, 0, "", none)
							} else {
								_, err = l.VoidHold(ctx, acct, hold, none)
							}
							if err == nil {
								wins.Add(1)
							} else {
								assert.ErrorIs(t, err, ledger.ErrHoldNotPending)
							}
						}()
					}
					wg.Wait()
					require.Equal(t, int64(1), wins.Load())
					b := balance(t, l, acct)
					assert.Zero(t, b.Held)
					assert.Contains(t, []int64{600, 1000}, b.Posted)
				}
			})
			t.Run("concurrent holds beyond available: the excess is refused", func(t *testing.T) {
				n++
				acct := fmt.Sprintf("h%d", n)
				fund(t, l, acct, 1000)
				var placed atomic.Int64
				var wg sync.WaitGroup
				for j := 0; j < 8; j++ { // 8 x 300 asked, 1000 available: 3 fit
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: fmt.Sprintf("c%d", j), Currency: "USD", Amount: 300, Timeout: time.Minute})
						if err == nil {
							placed.Add(1)
						} else {
							assert.ErrorIs(t, err, ledger.ErrInsufficientFunds)
						}
					}()
				}
				wg.Wait()
				assert.Equal(t, int64(3), placed.Load())
				assert.Equal(t, ledger.Balance{Posted: 1000, Held: 900, Available: 100}, balance(t, l, acct))
			})
			t.Run("capture to another account", func(t *testing.T) {
				for _, same := range []bool{true, false} {
					n++
					acct := fmt.Sprintf("k%d..buyer", n)
					to := fmt.Sprintf("k%d..seller", n)
					if !same {
						acct, to = apart(l, fmt.Sprintf("k%d-", n))
					}
					fund(t, l, acct, 1000)
					fund(t, l, to, 0)
					_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: "auth", Currency: "USD", Amount: 500, Timeout: time.Minute})
					require.NoError(t, err)
					rc, err := l.CaptureHold(ctx, acct, "auth", 320, to, none)
					require.NoError(t, err)
					h := decodeHold(t, rc)
					require.NotEmpty(t, h.TransferID)
					got, err := l.GetTransfer(ctx, h.TransferID)
					require.NoError(t, err)
					assert.Equal(t, ledger.TransferCompleted, got.Status, "same partition %v", same)
					assert.Equal(t, "auth", got.HoldID)
					assert.Equal(t, ledger.Balance{Posted: 680, Held: 0, Available: 680}, balance(t, l, acct))
					assert.Equal(t, int64(320), balance(t, l, to).Posted)
				}
			})
			t.Run("close", func(t *testing.T) {
				acct, hold := place(t)
				_, err := l.CloseAccount(ctx, acct, none)
				require.ErrorIs(t, err, ledger.ErrAccountNotEmpty)
				_, err = l.VoidHold(ctx, acct, hold, none)
				require.NoError(t, err)
				_, err = l.Withdraw(ctx, ledger.Withdraw{Account: acct, Currency: "USD", Amount: 1000}, none)
				require.NoError(t, err)
				rc, err := l.CloseAccount(ctx, acct, none)
				require.NoError(t, err)
				assert.Contains(t, string(rc.Body), `"status":"closed"`)
				_, err = l.Deposit(ctx, ledger.Deposit{Account: acct, Currency: "USD", Amount: 1}, none)
				require.ErrorIs(t, err, ledger.ErrAccountClosed)
				_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: "late", Currency: "USD", Amount: 1, Timeout: time.Minute})
				require.ErrorIs(t, err, ledger.ErrAccountClosed)
				_, err = l.CloseAccount(ctx, acct, none)
				require.ErrorIs(t, err, ledger.ErrAccountClosed)
			})
			t.Run("close expires holds whose time has passed", func(t *testing.T) {
				acct, hold := place(t)
				_, err := l.Withdraw(ctx, ledger.Withdraw{Account: acct, Currency: "USD", Amount: 600}, none)
				require.NoError(t, err)
				clock.Advance(2 * time.Minute)
				_, err = l.Withdraw(ctx, ledger.Withdraw{Account: acct, Currency: "USD", Amount: 400}, none)
				require.NoError(t, err)
				_, err = l.CloseAccount(ctx, acct, none)
				require.NoError(t, err)
				got, err := l.Hold(ctx, acct, hold)
				require.NoError(t, err)
				assert.Equal(t, ledger.HoldExpired, got.Status)
			})
			requireVerified(t, l)
		})
	}
}

func TestHoldExpirySweeper(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "sweep"})
			fund(t, l, "acct", 100)
			rc, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: "acct", ID: "h", Currency: "USD", Amount: 60, Timeout: time.Second})
			require.NoError(t, err)
			expires := decodeHold(t, rc).ExpiresAt
			defer runSweeper(t, l, ledger.SweeperConfig{})()

			// No request touches the account: the sweeper alone records the expiry.
			var expired ledger.Event
			require.Eventually(t, func() bool {
				events, _, err := l.Events(ctx, "acct", 0, ledger.MaxEventsPage)
				require.NoError(t, err)
				last := events[len(events)-1]
				expired = last
				return last.Type == ledger.EventHoldExpired
			}, 10*time.Second, 20*time.Millisecond)
			assert.WithinDuration(t, expires, expired.Time, 1500*time.Millisecond, "HoldExpired within about a second of the expiry")
			got, err := l.Hold(ctx, "acct", "h")
			require.NoError(t, err)
			assert.Equal(t, ledger.HoldExpired, got.Status)
			assert.Equal(t, ledger.Balance{Posted: 100, Held: 0, Available: 100}, balance(t, l, "acct"))
			requireVerified(t, l)
		})
	}
}

// TestManyHoldsExpireWhileClientsResolveThem: holds on several accounts of one partition
// expire together while clients capture or void some of them at the same moment. The
// sweeper submits the expiries together; every hold ends exactly once (one terminal event:
// captured, voided or expired), and the ledger verifies.
func TestManyHoldsExpireWhileClientsResolveThem(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			prefix := fmt.Sprintf("many%d", time.Now().UnixNano())
			l := MustOpen(t, rdb, ledger.Config{Prefix: prefix})
			// The clients' process runs 30ms behind the sweeper's: for it a hold is still
			// pending for 30ms after the sweeper may expire it — the race under test.
			behind := MustOpen(t, rdb, ledger.Config{Prefix: prefix, Clock: func() time.Time { return time.Now().Add(-30 * time.Millisecond) }})
			const accounts, perAccount = 8, 5
			type ref struct{ account, hold string }
			var holds []ref
			for a := range accounts {
				acct := fmt.Sprintf("sw..a%d", a)
				fund(t, l, acct, 1000)
				for h := range perAccount {
					id := fmt.Sprintf("h%d", h)
					_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: acct, ID: id, Currency: "USD", Amount: 10, Timeout: time.Second})
					require.NoError(t, err)
					holds = append(holds, ref{acct, id})
				}
			}
			defer runSweeper(t, l, ledger.SweeperConfig{HoldInterval: 50 * time.Millisecond})()

			// A third of the holds: a client captures or voids it in the 30ms after its
			// expiry; either the client wins (201) or the sweeper did (409 hold_not_pending).
			var wg sync.WaitGroup
			for i, h := range holds {
				if i%3 != 0 {
					continue
				}
				wg.Go(func() {
					exp, err := l.Hold(ctx, h.account, h.hold)
					if !assert.NoError(t, err) {
						return
					}
					<-time.After(time.Until(exp.ExpiresAt) + 5*time.Millisecond*time.Duration(i%5))
					if i%2 == 0 {
						_, err = behind.CaptureHold(ctx, h.account, h.hold, 0, "", ledger.WriteOptions{})
					} else {
						_, err = behind.VoidHold(ctx, h.account, h.hold, ledger.WriteOptions{})
					}
					if err != nil {
						assert.ErrorIs(t, err, ledger.ErrHoldNotPending)
					}
				})
			}
			wg.Wait()
			require.Eventually(t, func() bool {
				for _, h := range holds {
					got, err := l.Hold(ctx, h.account, h.hold)
					require.NoError(t, err)
					if got.ResolvedAt == nil {
						return false // not recorded yet (an expired hold reads as expired before)
					}
				}
				return true
			}, 15*time.Second, 20*time.Millisecond)

			terminal := map[ref]int{}
			for a := range accounts {
				acct := fmt.Sprintf("sw..a%d", a)
				events, _, err := l.Events(ctx, acct, 0, ledger.MaxEventsPage)
				require.NoError(t, err)
				for _, e := range events {
					switch e.Type {
					case ledger.EventHoldCaptured, ledger.EventHoldVoided, ledger.EventHoldExpired:
						var d ledger.HoldData
						require.NoError(t, json.Unmarshal(e.Data, &d))
						terminal[ref{acct, d.HoldID}]++
					}
				}
				left := 1000 - 10*int64(len(capturedOf(t, l, acct)))
				assert.Equal(t, ledger.Balance{Posted: left, Held: 0, Available: left}, balance(t, l, acct))
			}
			for _, h := range holds {
				assert.Equal(t, 1, terminal[h], "hold %s of %s ends exactly once", h.hold, h.account)
			}
			expiry := fmt.Sprintf("%s:{%d}:holds:expiry", l.Prefix(), l.Partition("sw..a0"))
			require.Eventually(t, func() bool { return rdb.ZCard(ctx, expiry).Val() == 0 }, 5*time.Second, 10*time.Millisecond,
				"no expiry index entry outlives its hold")
			requireVerified(t, l)
		})
	}
}

// capturedOf returns the IDs of the holds of account that were captured.
func capturedOf(t *testing.T, l *ledger.Ledger, account string) []string {
	t.Helper()
	events, _, err := l.Events(context.Background(), account, 0, ledger.MaxEventsPage)
	require.NoError(t, err)
	var out []string
	for _, e := range events {
		if e.Type == ledger.EventHoldCaptured {
			var d ledger.HoldData
			require.NoError(t, json.Unmarshal(e.Data, &d))
			out = append(out, d.HoldID)
		}
	}
	return out
}

func TestBatches(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "batch"})
	fund(t, l, "b1..a", 1000)
	fund(t, l, "b1..b", 0)
	other := "elsewhere" // an account outside b1's partition
	for i := 0; l.Partition(other) == l.Partition("b1..a"); i++ {
		other = fmt.Sprintf("elsewhere%d", i)
	}
	fund(t, l, other, 0)
	none := ledger.WriteOptions{}

	t.Run("atomic: all or nothing", func(t *testing.T) {
		ops := []ledger.BatchOp{
			{Type: ledger.OpDeposit, Account: "b1..a", Currency: "USD", Amount: 10, ID: "dep-1"},
			{Type: ledger.OpTransfer, ID: "bt-1", From: "b1..a", To: "b1..b", Currency: "USD", Amount: 500},
			{Type: ledger.OpHold, ID: "bh-1", Account: "b1..a", Currency: "USD", Amount: 100, Timeout: time.Minute},
			{Type: ledger.OpWithdrawal, Account: "b1..b", Currency: "USD", Amount: 600}, // only 500 there
		}
		beforeA, beforeB := requireConsistent(t, l, "b1..a"), requireConsistent(t, l, "b1..b")
		keys, lasting := keyCount(t, rdb), lastingKeys(t, rdb)
		res, _, err := l.Batch(ctx, true, ops, none)
		require.NoError(t, err)
		require.Len(t, res, 4)
		require.ErrorIs(t, res[3].Err, ledger.ErrInsufficientFunds)
		for i := 0; i < 3; i++ {
			require.ErrorIs(t, res[i].Err, ledger.ErrBatchAborted)
		}
		assert.Equal(t, beforeA, requireConsistent(t, l, "b1..a"))
		assert.Equal(t, beforeB, requireConsistent(t, l, "b1..b"))
		assert.Equal(t, lasting, lastingKeys(t, rdb), "nothing written for good")
		assert.Equal(t, keys+1, keyCount(t, rdb), "only the transfer ID's claim, expiring (a duplicate may still make the transfer)")

		ops[3].Amount = 450
		res, _, err = l.Batch(ctx, true, ops, ledger.WriteOptions{IdempotencyKey: "batch-1"})
		require.NoError(t, err)
		for _, r := range res {
			require.NoError(t, r.Err)
		}
		assert.Equal(t, ledger.Balance{Posted: 510, Held: 100, Available: 410}, balance(t, l, "b1..a"))
		assert.Equal(t, int64(50), balance(t, l, "b1..b").Posted)
		got, err := l.GetTransfer(ctx, "bt-1")
		require.NoError(t, err)
		assert.Equal(t, ledger.TransferCompleted, got.Status)
		h, err := l.Hold(ctx, "b1..a", "bh-1")
		require.NoError(t, err)
		assert.Equal(t, ledger.HoldPending, h.Status)

		again, replayed, err := l.Batch(ctx, true, ops, ledger.WriteOptions{IdempotencyKey: "batch-1"})
		require.NoError(t, err)
		assert.True(t, replayed)
		assert.Equal(t, res, again)
		// The operations' own IDs are taken: a single deposit with the key replays.
		rc, err := l.Deposit(ctx, ledger.Deposit{Account: "b1..a", Currency: "USD", Amount: 10}, ledger.WriteOptions{IdempotencyKey: "dep-1"})
		require.NoError(t, err)
		assert.True(t, rc.Replayed)
		assert.Equal(t, int64(510), balance(t, l, "b1..a").Posted)
	})

	t.Run("atomic across partitions is refused", func(t *testing.T) {
		_, _, err := l.Batch(ctx, true, []ledger.BatchOp{
			{Type: ledger.OpDeposit, Account: "b1..a", Currency: "USD", Amount: 1},
			{Type: ledger.OpDeposit, Account: other, Currency: "USD", Amount: 1},
		}, none)
		require.ErrorIs(t, err, ledger.ErrBatchNotAtomic)
	})

	t.Run("not atomic: each operation on its own, results match the state", func(t *testing.T) {
		before := balance(t, l, other).Posted
		res, _, err := l.Batch(ctx, false, []ledger.BatchOp{
			{Type: ledger.OpDeposit, Account: other, Currency: "USD", Amount: 30},
			{Type: ledger.OpWithdrawal, Account: other, Currency: "USD", Amount: 1000}, // refused
			{Type: ledger.OpWithdrawal, Account: other, Currency: "USD", Amount: 5},
			{Type: ledger.OpTransfer, From: "b1..a", To: other, Currency: "USD", Amount: 7},
			{Type: ledger.OpDeposit, Account: "nobody", Currency: "USD", Amount: 1},
		}, none)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.ErrorIs(t, res[1].Err, ledger.ErrInsufficientFunds)
		require.NoError(t, res[2].Err)
		require.NoError(t, res[3].Err)
		require.ErrorIs(t, res[4].Err, ledger.ErrAccountNotFound)
		var last ledger.OperationResult
		require.NoError(t, json.Unmarshal(res[2].Body, &last))
		assert.Equal(t, before+30-5, last.Account.Balances["USD"].Posted, "operations of one account run in order")
		assert.Equal(t, before+30-5+7, balance(t, l, other).Posted)
	})

	t.Run("malformed batches", func(t *testing.T) {
		_, _, err := l.Batch(ctx, false, nil, none)
		require.ErrorIs(t, err, ledger.ErrInvalid)
		_, _, err = l.Batch(ctx, false, make([]ledger.BatchOp, ledger.MaxBatchOps+1), none)
		require.ErrorIs(t, err, ledger.ErrInvalid)
		_, _, err = l.Batch(ctx, false, []ledger.BatchOp{{Type: "refund", Account: "b1..a", Currency: "USD", Amount: 1}}, none)
		require.ErrorIs(t, err, ledger.ErrInvalid)
		for _, dup := range [][2]ledger.BatchOp{
			{{Type: ledger.OpHold, ID: "x", Account: "b1..a", Currency: "USD", Amount: 1, Timeout: time.Minute}, {Type: ledger.OpHold, ID: "x", Account: "b1..a", Currency: "USD", Amount: 2, Timeout: time.Minute}},
			{{Type: ledger.OpTransfer, ID: "x", From: "b1..a", To: "b1..b", Currency: "USD", Amount: 1}, {Type: ledger.OpTransfer, ID: "x", From: "b1..b", To: "b1..a", Currency: "USD", Amount: 1}},
			{{Type: ledger.OpDeposit, ID: "x", Account: "b1..a", Currency: "USD", Amount: 1}, {Type: ledger.OpWithdrawal, ID: "x", Account: "b1..a", Currency: "USD", Amount: 1}},
		} {
			for _, atomic := range []bool{true, false} {
				_, _, err = l.Batch(ctx, atomic, dup[:], none)
				require.ErrorIs(t, err, ledger.ErrInvalid, "one id twice in a batch: %+v", dup)
			}
		}
	})
	requireVerified(t, l)
}

// roundTrips counts the commands and pipelines a client sends (one round trip each).
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// An atomic batch claims all its transfer IDs in one round trip, not one each. When one of
// them belongs to another source the batch fails at that operation, writes nothing, and
// lets every claim it made expire (a duplicate of the batch may still be in flight); the
// batch with that ID changed then commits.
func TestAtomicBatchClaimsTransferIDsTogether(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) { testAtomicBatchClaims(t, b.Start(t)) })
	}
}

func testAtomicBatchClaims(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	hook := &roundTrips{}
	rdb.AddHook(hook)
	l := MustOpen(t, rdb, ledger.Config{Prefix: "bc"})
	fund(t, l, "bc..a", 1000)
	fund(t, l, "bc..b", 0)
	fund(t, l, "bc-other", 100)

	const n = 50
	ops := make([]ledger.BatchOp, n)
	for i := range ops {
		ops[i] = ledger.BatchOp{Type: ledger.OpTransfer, ID: fmt.Sprintf("bc-t%d", i), From: "bc..a", To: "bc..b", Currency: "USD", Amount: 1}
	}
	// Another source made transfer bc-t20 already.
	_, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "bc-t20", From: "bc-other", To: "bc..b", Currency: "USD", Amount: 5})
	require.NoError(t, err)
	lasting := lastingKeys(t, rdb)

	before := hook.n.Load()
	res, _, err := l.Batch(ctx, true, ops, ledger.WriteOptions{})
	require.NoError(t, err)
	trips := hook.n.Load() - before
	for i, r := range res {
		if i == 20 {
			require.ErrorIs(t, r.Err, ledger.ErrIdempotencyKeyReused)
		} else {
			require.ErrorIs(t, r.Err, ledger.ErrBatchAborted, "operation %d", i)
		}
	}
	assert.Less(t, trips, int64(n), "one round trip per claim")
	assert.Equal(t, int64(1000), posted(t, l, "bc..a"), "nothing moved")
	assert.Equal(t, lasting, lastingKeys(t, rdb), "nothing written for good")
	for _, i := range []int{0, 49} {
		ttl, err := rdb.PTTL(ctx, l.TransferIndexKey(ops[i].ID)).Result()
		require.NoError(t, err)
		assert.Positive(t, ttl, "the claim of operation %d expires", i)
	}

	ops[20].ID = "bc-t20-mine"
	before = hook.n.Load()
	res, _, err = l.Batch(ctx, true, ops, ledger.WriteOptions{})
	require.NoError(t, err)
	assert.Less(t, hook.n.Load()-before, int64(10), "round trips of a batch of %d transfers", n)
	for _, r := range res {
		require.NoError(t, r.Err)
	}
	assert.Equal(t, int64(1000-n), posted(t, l, "bc..a"))
	for _, i := range []int{0, 20, 49} {
		got, err := l.GetTransfer(ctx, ops[i].ID)
		require.NoError(t, err)
		assert.Equal(t, ledger.TransferCompleted, got.Status)
		ttl, err := rdb.PTTL(ctx, l.TransferIndexKey(ops[i].ID)).Result()
		require.NoError(t, err)
		assert.Equal(t, time.Duration(-1), ttl, "a made transfer keeps its ID for good")
	}
	requireVerified(t, l)
}
