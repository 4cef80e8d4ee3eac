package lock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestNotAcquiredTellsBusyFromDown: a key held by another Locker fails with a
// *NotAcquiredError that is Held (busy); with a majority of the masters down the same call
// fails with one that is not Held (an outage), for TryDo and for Do alike.
func TestNotAcquiredTellsBusyFromDown(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	a := mustLocker(t, servers, Config{})
	b := mustLocker(t, servers, Config{WaitTimeout: 200 * time.Millisecond})
	bg := context.Background()
	busy := func(err error) bool {
		var b interface{ Busy() bool }
		require.True(t, errors.As(err, &b), "%v has a Busy method", err)
		return b.Busy()
	}

	lease, err := a.Acquire(bg, "k")
	require.NoError(t, err)
	err = b.TryDo(bg, "k", mustNotRun(t))
	require.ErrorIs(t, err, ErrNotAcquired)
	require.True(t, busy(err), "held by another Locker: %v", err)
	err = b.Do(bg, "k", mustNotRun(t))
	require.True(t, busy(err), "held by another Locker, after waiting: %v", err)
	var nae *NotAcquiredError
	require.ErrorAs(t, err, &nae)
	require.Equal(t, "k", nae.Key)
	require.NoError(t, lease.Release(bg))

	servers[0].Kill()
	servers[1].Kill()
	err = b.TryDo(bg, "free", mustNotRun(t))
	require.ErrorIs(t, err, ErrNotAcquired)
	require.False(t, busy(err), "two of three masters down is an outage: %v", err)
	err = b.Do(bg, "free", mustNotRun(t))
	require.ErrorIs(t, err, ErrNotAcquired)
	require.False(t, busy(err), "two of three masters down is an outage, after waiting: %v", err)

	require.NoError(t, b.Close())
	err = b.TryDo(bg, "free", mustNotRun(t))
	require.False(t, busy(err), "a closed Locker is not contention: %v", err)
}
