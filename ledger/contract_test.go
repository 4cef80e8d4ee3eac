package ledger_test

import (
	"context"
	"math"
	"math/big"
	"strconv"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// TestStoreContract runs the same store tests against real standalone Redis, a real
// 3-master Redis Cluster and the embedded miniredis.
func TestStoreContract(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			for _, gc := range []bool{true, false} {
				cfg := ledger.Config{DisableGroupCommit: !gc, Prefix: "gc" + map[bool]string{true: "on", false: "off"}[gc]}
				t.Run("group-commit="+map[bool]string{true: "on", false: "off"}[gc], func(t *testing.T) {
					runContract(t, rdb, cfg)
				})
			}
		})
	}
}

func runContract(t *testing.T, rdb redis.UniversalClient, cfg ledger.Config) {
	ctx := context.Background()
	l := MustOpen(t, rdb, cfg)
	none := ledger.WriteOptions{}

	t.Run("open, deposit, withdraw, read", func(t *testing.T) {
		rc, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: "alice", Metadata: map[string]string{"tier": "gold"}}, none)
		require.NoError(t, err)
		assert.JSONEq(t, `{"id":"alice","version":1,"status":"open","allow_negative":false,"metadata":{"tier":"gold"},"balances":{}}`, string(rc.Body))

		rc, err = l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "USD", Amount: 1000}, none)
		require.NoError(t, err)
		op := decodeOp(t, rc)
		assert.Equal(t, "alice:2", op.OperationID)
		assert.Equal(t, ledger.Balance{Posted: 1000, Available: 1000}, op.Account.Balances["USD"])

		_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "alice", Currency: "USD", Amount: 400}, none)
		require.NoError(t, err)
		_, err = l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "EUR", Amount: 5}, none)
		require.NoError(t, err)

		acc := requireConsistent(t, l, "alice")
		assert.Equal(t, int64(4), acc.Version)
		assert.Equal(t, int64(600), acc.Balances["USD"].Available)
		assert.Equal(t, int64(5), acc.Balances["EUR"].Posted)
	})

	t.Run("insufficient funds changes nothing", func(t *testing.T) {
		MustOpenAccount(t, l, "bob", false)
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "bob", Currency: "USD", Amount: 10}, none)
		require.NoError(t, err)
		_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "bob", Currency: "USD", Amount: 11}, none)
		require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
		_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "bob", Currency: "EUR", Amount: 1}, none)
		require.ErrorIs(t, err, ledger.ErrInsufficientFunds)
		acc := requireConsistent(t, l, "bob")
		assert.Equal(t, int64(2), acc.Version)
		assert.Equal(t, int64(10), acc.Balances["USD"].Posted)
	})

	t.Run("allow_negative permits overdraft", func(t *testing.T) {
		MustOpenAccount(t, l, "carol", true)
		_, err := l.Withdraw(ctx, ledger.Withdraw{Account: "carol", Currency: "USD", Amount: 70}, none)
		require.NoError(t, err)
		assert.Equal(t, int64(-70), requireConsistent(t, l, "carol").Balances["USD"].Available)
	})

	t.Run("unknown and duplicate accounts", func(t *testing.T) {
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "nobody", Currency: "USD", Amount: 1}, none)
		require.ErrorIs(t, err, ledger.ErrAccountNotFound)
		_, err = l.Account(ctx, "nobody")
		require.ErrorIs(t, err, ledger.ErrAccountNotFound)
		_, _, err = l.Events(ctx, "nobody", 0, 10)
		require.ErrorIs(t, err, ledger.ErrAccountNotFound)
		n, err := rdb.Exists(ctx, l.Prefix()+":{"+strconv.Itoa(l.Partition("nobody"))+"}:acct:nobody").Result()
		require.NoError(t, err)
		assert.Zero(t, n, "a rejected write creates nothing")

		MustOpenAccount(t, l, "dave", false)
		_, err = l.OpenAccount(ctx, ledger.OpenAccount{ID: "dave", AllowNegative: true}, none)
		require.ErrorIs(t, err, ledger.ErrAccountExists)
		assert.False(t, requireConsistent(t, l, "dave").AllowNegative)
	})

	t.Run("overflow is refused", func(t *testing.T) {
		MustOpenAccount(t, l, "erin", false)
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "erin", Currency: "USD", Amount: math.MaxInt64}, none)
		require.NoError(t, err)
		_, err = l.Deposit(ctx, ledger.Deposit{Account: "erin", Currency: "USD", Amount: 1}, none)
		require.ErrorIs(t, err, ledger.ErrOverflow)
		acc := requireConsistent(t, l, "erin")
		assert.Equal(t, int64(math.MaxInt64), acc.Balances["USD"].Posted)
		assert.Equal(t, int64(2), acc.Version)
	})

	t.Run("invalid input", func(t *testing.T) {
		for name, err := range map[string]error{
			"brace id":     ledger.OpenAccount{ID: "a{1}"}.Validate(),
			"colon id":     ledger.OpenAccount{ID: "a:b"}.Validate(),
			"zero amount":  ledger.Deposit{Account: "a", Currency: "USD", Amount: 0}.Validate(),
			"negative":     ledger.Withdraw{Account: "a", Currency: "USD", Amount: -1}.Validate(),
			"bad currency": ledger.Deposit{Account: "a", Currency: "usd", Amount: 1}.Validate(),
		} {
			assert.ErrorIs(t, err, ledger.ErrInvalid, name)
		}
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "USD", Amount: 1}, ledger.WriteOptions{IdempotencyKey: "has space"})
		require.ErrorIs(t, err, ledger.ErrInvalid)
	})

	t.Run("idempotency", func(t *testing.T) {
		MustOpenAccount(t, l, "frank", false)
		key := ledger.WriteOptions{IdempotencyKey: "dep-1"}
		dep := ledger.Deposit{Account: "frank", Currency: "USD", Amount: 50}
		first, err := l.Deposit(ctx, dep, key)
		require.NoError(t, err)
		again, err := l.Deposit(ctx, dep, key)
		require.NoError(t, err)
		assert.Equal(t, first.Body, again.Body, "a retry returns the original body byte for byte")
		assert.True(t, again.Replayed)

		_, err = l.Deposit(ctx, ledger.Deposit{Account: "frank", Currency: "USD", Amount: 51}, key)
		require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused)
		_, err = l.Withdraw(ctx, ledger.Withdraw{Account: "frank", Currency: "USD", Amount: 50}, key)
		require.ErrorIs(t, err, ledger.ErrIdempotencyKeyReused)

		acc := requireConsistent(t, l, "frank")
		assert.Equal(t, int64(2), acc.Version, "one event for three requests")
		assert.Equal(t, int64(50), acc.Balances["USD"].Posted)
	})

	t.Run("concurrent duplicates apply once", func(t *testing.T) {
		MustOpenAccount(t, l, "gina", false)
		var wg sync.WaitGroup
		bodies := make([][]byte, 16)
		for i := range bodies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rc, err := l.Deposit(ctx, ledger.Deposit{Account: "gina", Currency: "USD", Amount: 7}, ledger.WriteOptions{IdempotencyKey: "same"})
				assert.NoError(t, err)
				bodies[i] = rc.Body
			}()
		}
		wg.Wait()
		for _, b := range bodies {
			assert.Equal(t, bodies[0], b)
		}
		acc := requireConsistent(t, l, "gina")
		assert.Equal(t, int64(2), acc.Version)
		assert.Equal(t, int64(7), acc.Balances["USD"].Posted)
	})

	t.Run("events pages and outbox", func(t *testing.T) {
		MustOpenAccount(t, l, "hank", false)
		for i := 0; i < 9; i++ {
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "hank", Currency: "USD", Amount: int64(i + 1)}, none)
			require.NoError(t, err)
		}
		var all []ledger.Event
		var after int64
		for pages := 0; ; pages++ {
			require.Less(t, pages, 10)
			evs, next, err := l.Events(ctx, "hank", after, 4)
			require.NoError(t, err)
			all = append(all, evs...)
			if next == 0 {
				break
			}
			after = next
		}
		require.Len(t, all, 10)
		last, next, err := l.Events(ctx, "hank", 5, 5)
		require.NoError(t, err)
		assert.Len(t, last, 5)
		assert.Zero(t, next, "a page that ends exactly at the last event has no next")
		for i, e := range all {
			assert.Equal(t, int64(i+1), e.Version)
			assert.Equal(t, ledger.EventID("hank", int64(i+1)), e.ID)
		}
		assert.Equal(t, ledger.EventAccountOpened, all[0].Type)

		// Every event is in the partition outbox exactly once, in version order.
		msgs, err := rdb.XRange(ctx, outbox.StreamKey(l.Prefix(), l.Partition("hank")), "-", "+").Result()
		require.NoError(t, err)
		var got []int64
		for _, m := range msgs {
			msg, err := outbox.DecodeEntry(m.Values)
			require.NoError(t, err)
			if msg.Key == "hank" {
				e, err := ledger.DecodeEvent(msg)
				require.NoError(t, err, "the payload is the event, agreeing with the entry's fields")
				require.Equal(t, all[e.Version-1], e, "the outbox carries the stream's event unchanged")
				got = append(got, e.Version)
			}
		}
		assert.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, got)
	})

	t.Run("verify finds every account and a corrupted snapshot", func(t *testing.T) {
		rep, err := l.Verify(ctx)
		require.NoError(t, err)
		require.True(t, rep.OK(), "%v", rep.Problems)
		assert.GreaterOrEqual(t, rep.Accounts, 8)
		assert.Equal(t, 1, rep.Totals["USD"].Cmp(big.NewInt(math.MaxInt64)), "totals do not wrap around")

		MustOpenAccount(t, l, "zoe", false)
		key := l.Prefix() + ":{" + strconv.Itoa(l.Partition("zoe")) + "}:acct:zoe"
		require.NoError(t, rdb.HSet(ctx, key, "b:USD", 999).Err())
		rep, err = l.Verify(ctx)
		require.NoError(t, err)
		require.Len(t, rep.Problems, 2, "the snapshot differs from its replay, and the totals no longer add up")
		assert.Equal(t, ledger.ProblemReplayMismatch, rep.Problems[0].Kind)
		assert.Equal(t, "zoe", rep.Problems[0].Account)
		assert.Equal(t, ledger.ProblemNotConserved, rep.Problems[1].Kind)
		assert.Equal(t, "USD", rep.Problems[1].Currency)
		require.NoError(t, rdb.HDel(ctx, key, "b:USD").Err())

		// An event that does not apply is reported, not a failure of Verify; so is a stream
		// that runs past its snapshot.
		bad := `{"id":"zoe:2","type":"Withdrawn","account":"zoe","version":2,"time":"2026-01-01T00:00:00Z","data":"not an object"}`
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: key + ":events", ID: "2-0", Values: []any{"type", "Withdrawn", "event", bad}}).Err())
		require.NoError(t, rdb.HSet(ctx, key, "v", 2).Err())
		rep, err = l.Verify(ctx)
		require.NoError(t, err)
		require.NotEmpty(t, rep.Problems)
		assert.Equal(t, ledger.ProblemBadEvent, rep.Problems[0].Kind, "%v", rep.Problems)
		assert.Equal(t, "zoe", rep.Problems[0].Account)
		assert.Contains(t, rep.Problems[0].Detail, "replay: ")
		require.NoError(t, rdb.HSet(ctx, key, "v", 1).Err())
		rep, err = l.Verify(ctx)
		require.NoError(t, err)
		require.Len(t, rep.Problems, 1, "%v", rep.Problems)
		assert.Equal(t, ledger.ProblemStreamMismatch, rep.Problems[0].Kind)
		require.NoError(t, rdb.XDel(ctx, key+":events", "2-0").Err())
		rep, err = l.Verify(ctx)
		require.NoError(t, err)
		require.True(t, rep.OK(), "%v", rep.Problems)
	})

	t.Run("partition count is fixed", func(t *testing.T) {
		c := cfg
		c.Partitions = 8
		_, err := ledger.Open(ctx, rdb, c)
		require.ErrorIs(t, err, ledger.ErrPartitionMismatch)
	})
}
