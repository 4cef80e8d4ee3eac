package ledger_test

import (
	"context"
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

type outcome struct {
	rc  ledger.Receipt
	err error
}

// queueBehindBlockedCommit holds the account's first commit in the hook until every
// command in cmds waits behind it, then releases it. It returns each command's outcome.
func queueBehindBlockedCommit(t *testing.T, l *ledger.Ledger, account string, first func() error, cmds []func() (ledger.Receipt, error)) []outcome {
	t.Helper()
	release := make(chan struct{})
	entered := make(chan struct{})
	var calls atomic.Int64
	l.SetBeforeCommit(func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
	})
	defer l.SetBeforeCommit(nil)

	firstDone := make(chan error, 1)
	go func() { firstDone <- first() }()
	<-entered
	out := make([]outcome, len(cmds))
	var wg sync.WaitGroup
	for i, c := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := c()
			out[i] = outcome{rc, err}
		}()
		// Queue them in order so that the batch decides them in this order.
		require.Eventually(t, func() bool { return l.Waiting(account) == i+1 }, 5*time.Second, time.Millisecond)
	}
	close(release)
	require.NoError(t, <-firstDone)
	wg.Wait()
	return out
}

func TestGroupCommit(t *testing.T) {
	srv := redistest.MustStart(t)
	rdb := srv.Client()
	ctx := context.Background()
	none := ledger.WriteOptions{}

	t.Run("waiting commands share one script call", func(t *testing.T) {
		l := MustOpen(t, rdb, ledger.Config{Prefix: "gc1"})
		MustOpenAccount(t, l, "hot", false)
		before := l.Stats()
		var cmds []func() (ledger.Receipt, error)
		for i := 0; i < 20; i++ {
			cmds = append(cmds, func() (ledger.Receipt, error) {
				return l.Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 1}, none)
			})
		}
		out := queueBehindBlockedCommit(t, l, "hot", func() error {
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 1}, none)
			return err
		}, cmds)
		for _, o := range out {
			require.NoError(t, o.err)
		}
		st := l.Stats()
		assert.Equal(t, int64(2), st.Commits-before.Commits, "21 commands: the blocked one, then one batch of 20")
		assert.Equal(t, int64(21), st.Operations-before.Operations)
		acc := requireWhole(t, rdb, l, "hot")
		assert.Equal(t, int64(22), acc.Version)
		assert.Equal(t, int64(21), acc.Balances["USD"].Posted)
		// Every request got its own result: distinct operation IDs with increasing versions.
		seen := map[string]bool{}
		for _, o := range out {
			seen[decodeOp(t, o.rc).OperationID] = true
		}
		assert.Len(t, seen, 20)
	})

	t.Run("a rejected command does not affect its neighbours", func(t *testing.T) {
		l := MustOpen(t, rdb, ledger.Config{Prefix: "gc2"})
		MustOpenAccount(t, l, "acct", false)
		dep := func(n int64) func() (ledger.Receipt, error) {
			return func() (ledger.Receipt, error) {
				return l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: n}, none)
			}
		}
		wd := func(n int64) func() (ledger.Receipt, error) {
			return func() (ledger.Receipt, error) {
				return l.Withdraw(ctx, ledger.Withdraw{Account: "acct", Currency: "USD", Amount: n}, none)
			}
		}
		before := l.Stats()
		out := queueBehindBlockedCommit(t, l, "acct", func() error { _, err := dep(100)(); return err },
			[]func() (ledger.Receipt, error){wd(60), wd(60), dep(5), wd(45), wd(1)})
		require.NoError(t, out[0].err)
		require.ErrorIs(t, out[1].err, ledger.ErrInsufficientFunds, "40 left, 60 asked")
		require.NoError(t, out[2].err)
		require.NoError(t, out[3].err, "45 available after the deposit of 5")
		require.ErrorIs(t, out[4].err, ledger.ErrInsufficientFunds)
		assert.Equal(t, int64(2), l.Stats().Commits-before.Commits)
		assert.Equal(t, int64(0), decodeOp(t, out[3].rc).Account.Balances["USD"].Posted)
		acc := requireWhole(t, rdb, l, "acct")
		assert.Equal(t, int64(5), acc.Version, "open + 100 + three accepted; the two rejected wrote nothing")
	})

	t.Run("a batch whose commit outcome is lost applies all or nothing, once", func(t *testing.T) {
		cut := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
		t.Cleanup(func() { cut.Close() })
		l := MustOpen(t, cut, ledger.Config{Prefix: "gc3", RetryBackoff: 50 * time.Millisecond, GroupRetryBackoff: 50 * time.Millisecond, RetryBackoffMax: 100 * time.Millisecond, MaxRetries: 100})
		MustOpenAccount(t, l, "acct", false)
		release := make(chan struct{})
		var calls atomic.Int64
		l.SetBeforeCommit(func() {
			switch calls.Add(1) {
			case 1:
				<-release
			case 2: // the batch: the server freezes while it receives the script
				srv.Pause()
				time.AfterFunc(time.Second, srv.Resume) // the injected stall
			}
		})
		var wg sync.WaitGroup
		errs := make([]error, 11)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 10}, none)
			}()
			if i == 0 {
				require.Eventually(t, func() bool { return calls.Load() == 1 }, 5*time.Second, time.Millisecond)
			}
		}
		require.Eventually(t, func() bool { return l.Waiting("acct") == 10 }, 5*time.Second, time.Millisecond)
		close(release)
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		require.Positive(t, l.Stats().Retries, "the batch's first commit attempt timed out")
		acc := requireWhole(t, cut, l, "acct")
		assert.Equal(t, int64(12), acc.Version, "each of the 11 deposits exactly once")
		assert.Equal(t, int64(110), acc.Balances["USD"].Posted)
	})
}
