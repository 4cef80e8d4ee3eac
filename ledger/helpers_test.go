package ledger_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// backends are the three Redis implementations every store contract test runs against.
func backends() []redistest.Backend { return redistest.Backends() }

// MustOpen returns a ledger on rdb or fails the test.
func MustOpen(tb testing.TB, rdb redis.UniversalClient, cfg ledger.Config) *ledger.Ledger {
	tb.Helper()
	l, err := ledger.Open(context.Background(), rdb, cfg)
	require.NoError(tb, err)
	return l
}

// MustOpenAccount opens an account or fails the test.
func MustOpenAccount(tb testing.TB, l *ledger.Ledger, id string, allowNegative bool) {
	tb.Helper()
	_, err := l.OpenAccount(context.Background(), ledger.OpenAccount{ID: id, AllowNegative: allowNegative}, ledger.WriteOptions{})
	require.NoError(tb, err)
}

// decodeOp decodes a deposit/withdrawal receipt.
func decodeOp(tb testing.TB, rc ledger.Receipt) ledger.OperationResult {
	tb.Helper()
	var out ledger.OperationResult
	require.NoError(tb, json.Unmarshal(rc.Body, &out))
	return out
}

// requireConsistent asserts that replaying the account's stream yields its snapshot.
func requireConsistent(tb testing.TB, l *ledger.Ledger, id string) *ledger.Account {
	tb.Helper()
	ctx := context.Background()
	snap, err := l.Account(ctx, id)
	require.NoError(tb, err)
	replayed, err := l.Replay(ctx, id)
	require.NoError(tb, err)
	require.Empty(tb, ledger.AccountDiff(snap, replayed), "replaying the event stream must yield the snapshot")
	return snap
}

// runSweeper runs a sweeper with cfg over l until the returned stop is called (stop also
// checks that Run ended without error).
func runSweeper(t *testing.T, l *ledger.Ledger, cfg ledger.SweeperConfig) (stop func()) {
	t.Helper()
	s, err := l.NewSweeper(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return func() {
		cancel()
		require.NoError(t, <-done)
	}
}

// holdCommit makes the nth commit attempt of l (counted from now) wait, after its read, until
// release is called; entered is closed when it starts waiting. The hook is removed when the
// test ends, and release is safe to call more than once.
func holdCommit(t *testing.T, l *ledger.Ledger, n int64) (entered <-chan struct{}, release func()) {
	t.Helper()
	var calls atomic.Int64
	in, out := make(chan struct{}), make(chan struct{})
	l.SetBeforeCommit(func() {
		if calls.Add(1) == n {
			close(in)
			<-out
		}
	})
	var once sync.Once
	release = func() { once.Do(func() { close(out) }) }
	t.Cleanup(func() {
		release()
		l.SetBeforeCommit(nil)
	})
	return in, release
}

// waitDrained waits (30s at most) until no partition of the relay r has entries left to
// deliver.
func waitDrained(t *testing.T, r *outbox.Relay, what string) {
	t.Helper()
	require.Eventually(t, func() bool {
		sts, err := r.Status(context.Background())
		if err != nil {
			return false
		}
		for _, st := range sts {
			if st.Backlog != 0 {
				return false
			}
		}
		return true
	}, 30*time.Second, 5*time.Millisecond, what)
}
