package ledger_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// requireWhole asserts that the account's stream, snapshot and the partition outbox agree:
// every event is in the outbox exactly once and the snapshot is the replay of the stream.
func requireWhole(t *testing.T, rdb redis.UniversalClient, l *ledger.Ledger, id string) *ledger.Account {
	t.Helper()
	acc := requireConsistent(t, l, id)
	msgs, err := rdb.XRange(context.Background(), outbox.StreamKey(l.Prefix(), l.Partition(id)), "-", "+").Result()
	require.NoError(t, err)
	seen := map[int64]int{}
	for _, m := range msgs {
		msg, err := outbox.DecodeEntry(m.Values)
		require.NoError(t, err)
		if msg.Key == id {
			seen[msg.Seq]++
		}
	}
	require.Len(t, seen, int(acc.Version), "one outbox entry per event")
	for v := int64(1); v <= acc.Version; v++ {
		require.Equal(t, 1, seen[v], "outbox entry for version %d", v)
	}
	return acc
}

// TestCommitCrashSafety cuts the ledger's Redis connections between the read and the commit.
func TestCommitCrashSafety(t *testing.T) {
	srv := redistest.MustStart(t)
	admin := srv.Client()
	ctx := context.Background()

	t.Run("connections killed between read and commit", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1}) // no silent client retries
		t.Cleanup(func() { rdb.Close() })
		l := MustOpen(t, rdb, ledger.Config{Prefix: "kill", DisableGroupCommit: true})
		MustOpenAccount(t, l, "acct", false)
		var attempts, killed atomic.Int64
		l.SetBeforeCommit(func() {
			if attempts.Add(1)%2 == 1 {
				n, err := admin.ClientKillByFilter(ctx, "TYPE", "normal", "SKIPME", "yes").Result()
				require.NoError(t, err)
				killed.Add(n)
			}
		})
		var sum int64
		for i := 1; i <= 40; i++ {
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: int64(i)}, ledger.WriteOptions{})
			require.NoError(t, err, "the ledger retries an attempt whose connection died")
			sum += int64(i)
		}
		require.Positive(t, killed.Load(), "the fault was injected")
		acc := requireWhole(t, rdb, l, "acct")
		assert.Equal(t, int64(41), acc.Version, "each deposit applied exactly once")
		assert.Equal(t, sum, acc.Balances["USD"].Posted)
	})

	t.Run("server stalls during commit, client gives up, retry applies once", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		l := MustOpen(t, rdb, ledger.Config{Prefix: "stall", DisableGroupCommit: true, MaxRetries: 1})
		MustOpenAccount(t, l, "acct", false)
		resumed := make(chan struct{})
		var once atomic.Bool
		l.SetBeforeCommit(func() {
			if !once.CompareAndSwap(false, true) {
				return
			}
			// The commit script is sent to a frozen server: the client times out, then the
			// server wakes up and runs it. The outcome is unknown to the caller.
			srv.Pause()
			go func() {
				defer close(resumed)
				time.Sleep(time.Second) // length of the injected stall, not a synchronisation wait
				srv.Resume()
			}()
		})
		opts := ledger.WriteOptions{IdempotencyKey: "pay-1"}
		dep := ledger.Deposit{Account: "acct", Currency: "USD", Amount: 500}
		first, err := l.Deposit(ctx, dep, opts)
		<-resumed
		if err != nil {
			t.Logf("first attempt failed ambiguously: %v", err)
		}
		// A client retry with the same key tells what happened and never applies twice.
		var again ledger.Receipt
		require.Eventually(t, func() bool {
			again, err = l.Deposit(ctx, dep, opts)
			return err == nil
		}, 10*time.Second, 20*time.Millisecond)
		if first.Body != nil {
			assert.Equal(t, first.Body, again.Body)
		}
		acc := requireWhole(t, rdb, l, "acct")
		assert.Equal(t, int64(2), acc.Version, "applied exactly once")
		assert.Equal(t, int64(500), acc.Balances["USD"].Posted)
	})

	t.Run("server stalls during commit, ledger's own retry applies once without a key", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		l := MustOpen(t, rdb, ledger.Config{Prefix: "stall2", DisableGroupCommit: true, MaxRetries: 100,
			RetryBackoff: 50 * time.Millisecond, RetryBackoffMax: 100 * time.Millisecond})
		MustOpenAccount(t, l, "acct", false)
		var once atomic.Bool
		l.SetBeforeCommit(func() {
			if once.CompareAndSwap(false, true) {
				srv.Pause()
				time.AfterFunc(time.Second, srv.Resume) // the injected stall
			}
		})
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 500}, ledger.WriteOptions{})
		require.NoError(t, err)
		require.Positive(t, l.Stats().Retries, "the commit was retried after its outcome was unknown")
		acc := requireWhole(t, rdb, l, "acct")
		assert.Equal(t, int64(2), acc.Version, "the internal operation record stops a second application")
		assert.Equal(t, int64(500), acc.Balances["USD"].Posted)
	})
}
