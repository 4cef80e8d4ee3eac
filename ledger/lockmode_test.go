package ledger_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// mustLocker returns a Locker over the given lock masters.
func mustLocker(t *testing.T, masters []*redistest.Server, cfg lock.Config) *lock.Locker {
	t.Helper()
	clients := make([]redis.UniversalClient, len(masters))
	for i, m := range masters {
		c := redis.NewClient(lock.MasterOptions(m.Addr()))
		t.Cleanup(func() { c.Close() })
		clients[i] = c
	}
	l, err := lock.New(clients, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// frozenLocker takes a real lease but neither renews it nor notices when it expires: the
// behaviour of a process frozen by a GC pause or SIGSTOP, whose renewal and timers stop too.
type frozenLocker struct {
	locker *lock.Locker
	last   *atomic.Pointer[lock.Lease] // the lease of the latest Do
}

func (f frozenLocker) Do(ctx context.Context, key string, fn func(ctx context.Context) error) error {
	lease, err := f.locker.Acquire(ctx, key)
	if err != nil {
		return err
	}
	f.last.Store(lease)
	defer lease.Release(context.WithoutCancel(ctx))
	return fn(ctx)
}

// TestFencingByVersion: a writer whose lease expired while it was paused between read and
// commit is rejected by the version check; nothing it computed is written.
func TestFencingByVersion(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	masters := redistest.MustStartN(t, 3)
	cfg := lock.Config{TTL: 300 * time.Millisecond, WaitTimeout: 5 * time.Second}

	paused := frozenLocker{locker: mustLocker(t, masters, cfg), last: &atomic.Pointer[lock.Lease]{}}
	a := MustOpen(t, rdb, ledger.Config{Prefix: "fence", Mode: ledger.ModeLock, Locker: paused, DisableGroupCommit: true})
	b := MustOpen(t, rdb, ledger.Config{Prefix: "fence", Mode: ledger.ModeLock, Locker: mustLocker(t, masters, cfg), DisableGroupCommit: true})
	MustOpenAccount(t, b, "acct", false)
	_, err := b.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
	require.NoError(t, err)

	var once atomic.Bool
	a.SetBeforeCommit(func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		// A has read balance 100 and decided to withdraw 100. It freezes past its lease.
		lease := paused.last.Load()
		require.Eventually(t, func() bool { return time.Now().After(lease.Until()) }, 5*time.Second, 5*time.Millisecond)
		_, err := b.Withdraw(ctx, ledger.Withdraw{Account: "acct", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
		require.NoError(t, err, "B takes the expired lease and commits")
	})
	_, err = a.Withdraw(ctx, ledger.Withdraw{Account: "acct", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
	require.ErrorIs(t, err, ledger.ErrInsufficientFunds, "A's stale commit was rejected; re-decided on fresh state it fails")
	assert.Equal(t, int64(1), a.Stats().Conflicts, "the version check rejected A's commit")

	acc := requireWhole(t, rdb, b, "acct")
	assert.Equal(t, int64(3), acc.Version, "open, deposit, B's withdrawal: nothing of A's")
	assert.Equal(t, int64(0), acc.Balances["USD"].Posted, "no double withdrawal")
}

// TestLockQuorum: with 3 lock masters one may die; with two dead, writes fail fast with
// ErrLockUnavailable and write nothing; when the masters come back, writes succeed again.
func TestLockQuorum(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	masters := redistest.MustStartN(t, 3)
	wait := 500 * time.Millisecond
	l := MustOpen(t, rdb, ledger.Config{Mode: ledger.ModeLock, Locker: mustLocker(t, masters, lock.Config{TTL: 2 * time.Second, WaitTimeout: wait})})
	MustOpenAccount(t, l, "acct", false)
	dep := func() error {
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 1}, ledger.WriteOptions{})
		return err
	}

	masters[0].Kill()
	require.NoError(t, dep(), "2 of 3 masters are a quorum")

	masters[1].Kill()
	start := time.Now()
	err := dep()
	require.ErrorIs(t, err, ledger.ErrLockUnavailable)
	assert.Less(t, time.Since(start), 4*wait, "fails within the configured wait")
	acc := requireWhole(t, rdb, l, "acct")
	assert.Equal(t, int64(2), acc.Version, "the failed write wrote nothing")

	masters[0].Restart()
	masters[1].Restart()
	// go-redis re-dials a refused node in the background about once a second.
	require.Eventually(t, func() bool { return dep() == nil }, 15*time.Second, 50*time.Millisecond,
		"recovers without a restart of the ledger")
	assert.Equal(t, int64(3), requireWhole(t, rdb, l, "acct").Version)
}

// TestLockNodeRestartWithoutPersistence: A holds a lease granted by 2 of 3 masters; one of
// them restarts empty and B gets a quorum too. Both believe they hold the lease; the version
// check lets only one of them commit on a given version.
func TestLockNodeRestartWithoutPersistence(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	masters := redistest.MustStartN(t, 3)
	// No renewal happens inside the test's window (ExtendEvery 4s), so A really believes it
	// holds the lease when it commits. The wait is shorter than the TTL: A's retry must not
	// find a stale key that a timed-out attempt or a fail-fast release left on a master.
	cfg := lock.Config{TTL: 6 * time.Second, ExtendEvery: 4 * time.Second, WaitTimeout: 2 * time.Second}
	a := MustOpen(t, rdb, ledger.Config{Prefix: "restart", Mode: ledger.ModeLock, Locker: mustLocker(t, masters, cfg), DisableGroupCommit: true})
	b := MustOpen(t, rdb, ledger.Config{Prefix: "restart", Mode: ledger.ModeLock, Locker: mustLocker(t, masters, cfg), DisableGroupCommit: true})
	MustOpenAccount(t, a, "acct", false)
	_, err := a.Deposit(ctx, ledger.Deposit{Account: "acct", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
	require.NoError(t, err)

	masters[2].Kill() // A's lease will live on masters 0 and 1 only
	var once atomic.Bool
	var bErr error
	a.SetBeforeCommit(func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		masters[1].Restart() // loses A's lease key
		masters[2].Restart()
		// B now gets masters 1 and 2: a quorum while A still holds its lease.
		_, bErr = b.Withdraw(ctx, ledger.Withdraw{Account: "acct", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
	})
	_, aErr := a.Withdraw(ctx, ledger.Withdraw{Account: "acct", Currency: "USD", Amount: 100}, ledger.WriteOptions{})
	require.NoError(t, bErr, "B obtained a lease that overlaps A's")
	require.ErrorIs(t, aErr, ledger.ErrInsufficientFunds)
	assert.Equal(t, int64(1), a.Stats().Conflicts, "A's commit on the same version was rejected")

	evs, _, err := a.Events(ctx, "acct", 0, 100)
	require.NoError(t, err)
	require.Len(t, evs, 3, "open, deposit, one withdrawal")
	for i, e := range evs {
		assert.Equal(t, int64(i+1), e.Version)
	}
	assert.Equal(t, int64(0), requireWhole(t, rdb, a, "acct").Balances["USD"].Posted)
}

// TestLockModeHotAccount: many goroutines over two lock-mode ledgers (two processes) on one
// account: no errors, nothing lost or doubled, and no version conflicts between lease holders.
func TestLockModeHotAccount(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	masters := redistest.MustStartN(t, 3)
	var ledgers []*ledger.Ledger
	for i := 0; i < 2; i++ {
		ledgers = append(ledgers, MustOpen(t, rdb, ledger.Config{Mode: ledger.ModeLock,
			Locker: mustLocker(t, masters, lock.Config{TTL: 2 * time.Second, WaitTimeout: 10 * time.Second})}))
	}
	MustOpenAccount(t, ledgers[0], "hot", false)
	res := hammer(t, ledgers, "hot", 32, 50)
	assert.Zero(t, res.conflicts)
	acc := requireConsistent(t, ledgers[0], "hot")
	assert.Equal(t, res.acknowledged, acc.Balances["USD"].Posted)
	assert.Equal(t, int64(res.applied+1), acc.Version)
	for _, l := range ledgers {
		// a batch decided on the snapshot cache after the other process held the lease
		// conflicts (a stale snapshot); one decided on a fresh read under the lease never
		st := l.Stats()
		assert.Equal(t, st.StaleSnapshots, st.Conflicts, "lease holders never race each other's version")
	}
	result := porcupine.CheckOperationsTimeout(balanceModel, res.hist.ops, 60*time.Second)
	require.Equal(t, porcupine.Ok, result, "lock-mode history is linearizable")
}
