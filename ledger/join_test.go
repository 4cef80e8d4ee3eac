package ledger_test

import (
	"context"
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
	"github.com/tally-ledger/tally/lock"
)

// queueDeposits starts n deposits of 1 on account, returns once queued of them wait behind
// the partition's leader, and returns a function that waits for all of them and requires
// each to have succeeded.
func queueDeposits(t *testing.T, l *ledger.Ledger, account string, n, queued int) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = l.Deposit(context.Background(), ledger.Deposit{Account: account, Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		}()
	}
	require.Eventually(t, func() bool { return l.Waiting(account) == queued }, 5*time.Second, time.Millisecond)
	return func() {
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
	}
}

// queueAtFirstCommit makes l's first commit, between its read and its script call, run
// first (when given) and then queue five deposits of 1 on account behind it. The returned
// function waits for the five.
func queueAtFirstCommit(t *testing.T, l *ledger.Ledger, account string, first func()) (wait func()) {
	var (
		calls  atomic.Int64
		queued func()
	)
	l.SetBeforeCommit(func() {
		if calls.Add(1) != 1 {
			return
		}
		if first != nil {
			first()
		}
		queued = queueDeposits(t, l, account, 5, 5)
	})
	return func() { queued() }
}

// TestRequestsJoinABatchWaitingForItsLease: in lock mode, while a group commit waits for an
// account's lease that another process holds, the requests that queue behind it join it once
// the lease is taken: one script call for all of them, not one for the batch that waited
// and another, which would wait for the lease again, for those that queued meanwhile.
func TestRequestsJoinABatchWaitingForItsLease(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	masters := redistest.MustStartN(t, 3)
	ctx := context.Background()
	l := MustOpen(t, rdb, ledger.Config{Prefix: fmt.Sprintf("join%d", time.Now().UnixNano()), Mode: ledger.ModeLock,
		Locker: mustLocker(t, masters, lock.Config{TTL: 5 * time.Second, WaitTimeout: 10 * time.Second})})
	MustOpenAccount(t, l, "hot", false)

	// Another process holds the account's lease.
	other := mustLocker(t, masters, lock.Config{TTL: 5 * time.Second})
	lease, err := other.Acquire(ctx, "acct:hot")
	require.NoError(t, err)

	before := l.Stats()
	// One of them leads and waits for the lease; the other five queue behind it.
	wait := queueDeposits(t, l, "hot", 6, 5)
	require.Equal(t, before.Commits, l.Stats().Commits, "nothing commits while the lease is held elsewhere")
	require.NoError(t, lease.Release(ctx))
	wait()

	requireJoined(t, rdb, l, before, 6, 7)
}

// requireJoined checks that l committed six deposits on "hot" since before in one script
// call that five of them joined, and the account's balance and version after them.
func requireJoined(t *testing.T, rdb redis.UniversalClient, l *ledger.Ledger, before ledger.Stats, posted, version int64) {
	t.Helper()
	st := l.Stats()
	assert.Equal(t, int64(1), st.Commits-before.Commits, "one script call: the five that queued joined the batch")
	assert.Equal(t, int64(6), st.Operations-before.Operations)
	assert.Equal(t, int64(5), st.Joined-before.Joined)
	acc := requireWhole(t, rdb, l, "hot")
	assert.Equal(t, posted, acc.Balances["USD"].Posted)
	assert.Equal(t, version, acc.Version)
}

// TestRequestsJoinARetry: in optimistic mode, a group commit that lost the race for its
// account to another process reads again before its retry; the requests that queued behind
// it meanwhile join that retry instead of waiting for it and then racing on their own. The
// retry waits GroupRetryBackoff, not RetryBackoff (here longer than the batch may take).
func TestRequestsJoinARetry(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			ctx := context.Background()
			prefix := fmt.Sprintf("joinretry%d", time.Now().UnixNano())
			l := MustOpen(t, rdb, ledger.Config{Prefix: prefix, BatchTimeout: 5 * time.Second,
				RetryBackoff: 10 * time.Second, RetryBackoffMax: 10 * time.Second})
			other := MustOpen(t, rdb, ledger.Config{Prefix: prefix, DisableGroupCommit: true})
			MustOpenAccount(t, l, "hot", false)

			// Between the batch's read and its commit: the other process writes the account,
			// and five more requests queue behind the batch.
			wait := queueAtFirstCommit(t, l, "hot", func() {
				_, err := other.Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
				require.NoError(t, err)
			})
			before := l.Stats()
			_, err := l.Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
			require.NoError(t, err)
			wait()

			assert.Equal(t, int64(1), l.Stats().Conflicts-before.Conflicts)
			requireJoined(t, rdb, l, before, 106, 8)
		})
	}
}

// TestRetryBackoffValidated: Open refuses a negative backoff base and one above the cap,
// for requests alone and for group commits.
func TestRetryBackoffValidated(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	for _, cfg := range []ledger.Config{
		{RetryBackoff: -time.Millisecond},
		{RetryBackoff: time.Second, RetryBackoffMax: time.Millisecond},
		{GroupRetryBackoff: -time.Millisecond},
		{GroupRetryBackoff: time.Second, RetryBackoffMax: time.Millisecond},
	} {
		_, err := ledger.Open(context.Background(), rdb, cfg)
		require.ErrorContains(t, err, "retry backoff", "%+v", cfg)
	}
}

// TestNothingJoinsABatchAfterAStoreError: when a group commit's commit fails for want of the
// store (here a timeout: the server stalls), the requests that queued behind it do not join
// its retry — during an outage they keep their own batch, with all of its retries ahead.
func TestNothingJoinsABatchAfterAStoreError(t *testing.T) {
	srv := redistest.MustStart(t)
	cut := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { cut.Close() })
	ctx := context.Background()
	l := MustOpen(t, cut, ledger.Config{Prefix: fmt.Sprintf("nojoin%d", time.Now().UnixNano()), MaxRetries: 100,
		GroupRetryBackoff: 50 * time.Millisecond, RetryBackoffMax: 100 * time.Millisecond})
	MustOpenAccount(t, l, "hot", false)

	wait := queueAtFirstCommit(t, l, "hot", func() {
		srv.Pause() // the commit times out: its outcome is unknown, the retry reads
		time.AfterFunc(time.Second, srv.Resume)
	})
	before := l.Stats()
	_, err := l.Deposit(ctx, ledger.Deposit{Account: "hot", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
	require.NoError(t, err)
	wait()

	st := l.Stats()
	require.Positive(t, st.Retries-before.Retries, "the first commit timed out")
	assert.Zero(t, st.Joined-before.Joined, "the five waited for their own batch")
	acc := requireWhole(t, cut, l, "hot")
	assert.Equal(t, int64(6), acc.Balances["USD"].Posted)
	assert.Equal(t, int64(7), acc.Version)
}
