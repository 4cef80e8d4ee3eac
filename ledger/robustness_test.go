package ledger_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

func TestDuplicateKeysInOneBatch(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{Prefix: "dup"})
	MustOpenAccount(t, l, "acct", false)
	dep := func(amount int64, key string) func() (ledger.Receipt, error) {
		return func() (ledger.Receipt, error) {
			return l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: amount}, ledger.WriteOptions{IdempotencyKey: key})
		}
	}
	wd := func(amount int64, key string) func() (ledger.Receipt, error) {
		return func() (ledger.Receipt, error) {
			return l.Withdraw(ctx, ledger.Withdraw{Account: "acct", Currency: "USD", Amount: amount}, ledger.WriteOptions{IdempotencyKey: key})
		}
	}
	// One batch: k1 five times, k1 with another body, a keyless deposit, k2 rejected for
	// insufficient funds and then k2 again after the deposit would have made it possible:
	// the second copy replays the refusal (its client may have been told already).
	out := queueBehindBlockedCommit(t, l, "acct", func() error { _, err := dep(1, "")(); return err },
		[]func() (ledger.Receipt, error){
			dep(1000, "k1"), dep(1000, "k1"), wd(5000, "k2"), dep(1000, "k1"), dep(7, "k1"),
			dep(1000, "k1"), dep(9000, ""), wd(5000, "k2"), dep(1000, "k1"),
		})
	first := out[0]
	require.NoError(t, first.err)
	assert.False(t, first.rc.Replayed)
	for _, i := range []int{1, 3, 5, 8} {
		require.NoError(t, out[i].err, "copy %d of k1", i)
		assert.Equal(t, first.rc.Body, out[i].rc.Body, "copy %d of k1 must get the first response byte for byte", i)
		assert.True(t, out[i].rc.Replayed, "copy %d of k1 is a replay", i)
	}
	require.ErrorIs(t, out[4].err, ledger.ErrIdempotencyKeyReused, "k1 with another body")
	require.ErrorIs(t, out[2].err, ledger.ErrInsufficientFunds, "k2 before the deposit")
	assert.False(t, ledger.IsReplayed(out[2].err))
	require.ErrorIs(t, out[7].err, ledger.ErrInsufficientFunds, "k2 after the deposit: the refusal of its first copy stands")
	assert.True(t, ledger.IsReplayed(out[7].err))
	assert.Equal(t, out[2].err.Error(), out[7].err.Error(), "the same refusal")
	require.NoError(t, out[6].err)

	acc := requireConsistent(t, l, "acct")
	assert.Equal(t, int64(1+1000+9000), acc.Balances["USD"].Posted, "k1 once, k2 never")
	assert.Equal(t, int64(4), acc.Version, "open, the blocked deposit, k1, the keyless deposit")

	again, err := dep(1000, "k1")()
	require.NoError(t, err)
	assert.Equal(t, first.rc.Body, again.Body)
	_, err = wd(5000, "k2")()
	require.ErrorIs(t, err, ledger.ErrInsufficientFunds, "a later retry of k2, with the money there, replays the refusal")
	assert.True(t, ledger.IsReplayed(err))
	assert.Equal(t, int64(1+1000+9000), requireConsistent(t, l, "acct").Balances["USD"].Posted)
}

func TestCommitScriptRefusesRecordNamedTwice(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "twice"})
			MustOpenAccount(t, l, "acct", false)
			err := l.CommitRecordsTwice(ctx, "acct", "k")
			require.ErrorIs(t, err, ledger.ErrInternal)
			require.NotErrorIs(t, err, ledger.ErrStoreUnavailable, "a refused commit is a bug, not an outage")
			acc := requireConsistent(t, l, "acct")
			assert.Equal(t, int64(1), acc.Version, "nothing written")
			assert.Empty(t, acc.Balances)
		})
	}
}

func TestLeaderPanicFailsOnlyItsBatch(t *testing.T) {
	for _, group := range []bool{true, false} {
		t.Run(fmt.Sprintf("group-commit=%v", group), func(t *testing.T) {
			rdb := redistest.MustStart(t).Client()
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "panic", DisableGroupCommit: !group})
			MustOpenAccount(t, l, "acct", false)
			release := make(chan struct{})
			var calls atomic.Int64
			l.SetBeforeCommit(func() {
				if calls.Add(1) == 1 {
					<-release
					panic("injected fault while committing")
				}
			})
			const n = 8
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
				}()
				if i == 0 {
					require.Eventually(t, func() bool { return calls.Load() == 1 }, 5*time.Second, time.Millisecond)
				}
			}
			if group {
				require.Eventually(t, func() bool { return l.Waiting("acct") == n-1 }, 5*time.Second, time.Millisecond)
			}
			close(release)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("waiters stranded behind a leader that panicked")
			}
			var pe *ledger.PanicError
			require.ErrorAs(t, errs[0], &pe, "the panicking batch fails")
			require.ErrorIs(t, errs[0], ledger.ErrInternal)
			assert.Contains(t, string(pe.Stack), "robustness_test.go", "the stack is kept for the log")
			for i := 1; i < n; i++ {
				require.NoError(t, errs[i], "request %d came after the panicking batch", i)
			}
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
			require.NoError(t, err, "the account still takes writes")
			assert.Equal(t, 0, l.Waiting("acct"))
			acc := requireConsistent(t, l, "acct")
			assert.Equal(t, int64(n), acc.Balances["USD"].Posted, "the panicking deposit never committed")
		})
	}
}

func TestStoreErrorsAreClassified(t *testing.T) {
	ctx := context.Background()

	t.Run("a script error is internal and not retried", func(t *testing.T) {
		for _, b := range backends() {
			t.Run(b.Name, func(t *testing.T) {
				l := MustOpen(t, b.Start(t), ledger.Config{Prefix: "scripterr"})
				MustOpenAccount(t, l, "acct", false)
				l.BreakCommitScript()
				_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
				require.ErrorIs(t, err, ledger.ErrInternal)
				require.NotErrorIs(t, err, ledger.ErrStoreUnavailable)
				var rerr redis.Error
				require.ErrorAs(t, err, &rerr, "the Redis error stays in the chain (%%w)")
				assert.Zero(t, l.Stats().Retries, "a bug is not retried")
			})
		}
	})

	t.Run("an unreachable Redis is unavailable and retried", func(t *testing.T) {
		srv := redistest.MustStart(t)
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialerRetries: 1, DialTimeout: 200 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		l := MustOpen(t, rdb, ledger.Config{Prefix: "down", MaxRetries: 3})
		MustOpenAccount(t, l, "acct", false)
		srv.Stop()
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		require.ErrorIs(t, err, ledger.ErrStoreUnavailable)
		require.NotErrorIs(t, err, ledger.ErrInternal)
		assert.Equal(t, int64(3), l.Stats().Retries)
	})

	t.Run("a read-only replica is transient", func(t *testing.T) {
		servers := redistest.MustStartN(t, 2)
		primary, replica := servers[0], servers[1]
		l := MustOpen(t, primary.Client(), ledger.Config{Prefix: "ro"})
		MustOpenAccount(t, l, "acct", false)
		// A ledger opened on a node that then becomes a replica (a failover demoted it).
		onReplica := MustOpen(t, replica.Client(), ledger.Config{Prefix: "ro", MaxRetries: 2})
		host, port, _ := net.SplitHostPort(primary.Addr())
		require.NoError(t, replica.Client().ReplicaOf(ctx, host, port).Err())
		require.Eventually(t, func() bool { _, err := onReplica.Account(ctx, "acct"); return err == nil },
			10*time.Second, 10*time.Millisecond, "the replica has synced the account")
		err := replica.Client().Set(ctx, "k", "v", 0).Err()
		require.Error(t, err)
		assert.True(t, ledger.Transient(err), "READONLY: %v", err)
		_, err = onReplica.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		require.ErrorIs(t, err, ledger.ErrStoreUnavailable)
		require.NotErrorIs(t, err, ledger.ErrInternal)
	})

	t.Run("a full Redis is transient and changes nothing", func(t *testing.T) {
		srv := redistest.MustStart(t)
		rdb := srv.Client()
		l := MustOpen(t, rdb, ledger.Config{Prefix: "oom", MaxRetries: 2})
		MustOpenAccount(t, l, "acct", false)
		before, err := l.Account(ctx, "acct")
		require.NoError(t, err)
		// A Redis at its maxmemory with noeviction refuses writes ("OOM ..."); memory may
		// free up (keys expire, streams are trimmed), so it is an outage, not a bug.
		require.NoError(t, rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
		require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", "1").Err())
		_, err = l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
		require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", "0").Err())
		require.ErrorIs(t, err, ledger.ErrStoreUnavailable)
		require.NotErrorIs(t, err, ledger.ErrInternal)
		after, err := l.Account(ctx, "acct")
		require.NoError(t, err)
		assert.Equal(t, before.Version, after.Version, "nothing written")
		_, err = l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
		require.NoError(t, err, "writes again once there is room")
	})

	t.Run("replies and errors", func(t *testing.T) {
		for _, c := range []struct {
			err  error
			want bool
		}{
			{replyError("LOADING Redis is loading the dataset in memory"), true},
			{replyError("TRYAGAIN Multiple keys request during rehashing of slot"), true},
			{replyError("CLUSTERDOWN The cluster is down"), true},
			{replyError("MOVED 3999 127.0.0.1:6381"), true},
			{replyError("ASK 3999 127.0.0.1:6381"), true},
			{replyError("READONLY You can't write against a read only replica."), true},
			{replyError("OOM command not allowed when used memory > 'maxmemory'."), true},
			{replyError("ERR Error running script (call to f_x): @user_script:1: Unknown Redis command"), false},
			{replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
			{replyError("NOSCRIPT No matching script"), false},
			{io.EOF, true},
			{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
			{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
			{redis.ErrPoolTimeout, true},
			{redis.ErrClosed, true},
			{errors.New("ledger: something else"), false},
		} {
			assert.Equal(t, c.want, ledger.Transient(c.err), "%v", c.err)
		}
	})
}

// replyError is a Redis error reply as go-redis returns it.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestQueueCap(t *testing.T) {
	for _, group := range []bool{true, false} {
		t.Run(fmt.Sprintf("group-commit=%v", group), func(t *testing.T) {
			rdb := redistest.MustStart(t).Client()
			ctx := context.Background()
			l := MustOpen(t, rdb, ledger.Config{Prefix: "cap", MaxQueue: 3, DisableGroupCommit: !group})
			MustOpenAccount(t, l, "acct", false)
			release := make(chan struct{})
			var blocked atomic.Int64
			l.SetBeforeCommit(func() {
				blocked.Add(1)
				<-release
			})
			var wg sync.WaitGroup
			deposit := func() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
					assert.NoError(t, err)
				}()
			}
			// The first deposit blocks in its commit before the other two arrive: started
			// together, group commit may carry two of them in one batch, and the queue
			// would hold one, not two.
			deposit()
			require.Eventually(t, func() bool { return blocked.Load() == 1 }, 5*time.Second, time.Millisecond)
			deposit()
			deposit()
			if group {
				require.Eventually(t, func() bool { return l.Waiting("acct") == 2 }, 5*time.Second, time.Millisecond)
			} else {
				require.Eventually(t, func() bool { return blocked.Load() == 3 }, 5*time.Second, time.Millisecond)
			}
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{IdempotencyKey: "k"})
			require.ErrorIs(t, err, ledger.ErrOverloaded)
			assert.Equal(t, int64(1), l.Stats().Overloaded)
			close(release)
			wg.Wait()
			l.SetBeforeCommit(nil)
			acc := requireConsistent(t, l, "acct")
			assert.Equal(t, int64(3), acc.Balances["USD"].Posted, "the refused deposit wrote nothing")
			rc, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{IdempotencyKey: "k"})
			require.NoError(t, err, "once the queue drains the same key goes through")
			assert.False(t, rc.Replayed, "the refused request recorded nothing")
			assert.True(t, bytes.Contains(rc.Body, []byte(`"posted":4`)))
		})
	}
}
