package lock

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// startBlocking runs l.Do(key) with an fn that signals its start and then runs body.
// It returns once fn started, with the channel Do's result arrives on.
func startBlocking(t *testing.T, l *Locker, key string, body func(ctx context.Context) error) <-chan error {
	t.Helper()
	started := make(chan struct{})
	done := doAsync(context.Background(), l, key, func(ctx context.Context) error {
		close(started)
		return body(ctx)
	})
	mustReceive(t, started, 5*time.Second, "fn to start")
	return done
}

func TestRenewal(t *testing.T) {
	const ttl = 300 * time.Millisecond
	bg := context.Background()

	t.Run("fn running for more than 2×TTL keeps the lease", func(t *testing.T) {
		servers := redistest.MustStartN(t, 3)
		hr := newHookRecorder()
		a := mustLocker(t, servers, Config{TTL: ttl, ExtendEvery: 100 * time.Millisecond, Hooks: hr.hooks()})
		b := mustLocker(t, servers, Config{TTL: ttl, RetryDelayMin: 5 * time.Millisecond, RetryDelayMax: 10 * time.Millisecond})

		release := make(chan struct{})
		done := startBlocking(t, a, "long", func(ctx context.Context) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		})
		fnStart := time.Now()

		// Another process keeps trying for 2.5×TTL and must never get the key.
		ctx, cancel := context.WithTimeout(bg, 5*ttl/2)
		defer cancel()
		_, err := b.Acquire(ctx, "long")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.GreaterOrEqual(t, time.Since(fnStart), 2*ttl)

		close(release)
		require.NoError(t, mustReceive(t, done, 5*time.Second, "Do to return"))
		require.GreaterOrEqual(t, hr.renewed.Load(), int64(4), "about one renewal per ExtendEvery")
		require.Zero(t, hr.lost.Load())

		lease, err := b.TryAcquire(bg, "long")
		require.NoError(t, err, "released when fn returned")
		require.NoError(t, lease.Release(bg))
	})

	t.Run("a minority master going down does not lose the lease", func(t *testing.T) {
		servers := redistest.MustStartN(t, 3)
		hr := newHookRecorder()
		a := mustLocker(t, servers, Config{TTL: ttl, ExtendEvery: 100 * time.Millisecond, Hooks: hr.hooks()})

		release := make(chan struct{})
		done := startBlocking(t, a, "k", func(ctx context.Context) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		})
		servers[0].Kill()
		renewed := hr.renewed.Load()
		// Several renewals, spanning more than a TTL, succeed on the remaining majority.
		require.Eventually(t, func() bool { return hr.renewed.Load() >= renewed+4 }, 5*time.Second, 5*time.Millisecond)
		close(release)
		require.NoError(t, mustReceive(t, done, 5*time.Second, "Do to return"))
		require.Zero(t, hr.lost.Load())
	})
}

func TestLeaseLost(t *testing.T) {
	const ttl = 400 * time.Millisecond
	bg := context.Background()
	config := func(hr *hookRecorder) Config {
		return Config{TTL: ttl, ExtendEvery: 100 * time.Millisecond, SafetyMargin: 100 * time.Millisecond, Hooks: hr.hooks()}
	}
	// waitForCancel is an fn body that returns when its ctx is cancelled, recording the cause.
	waitForCancel := func(cause *error) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			<-ctx.Done()
			*cause = context.Cause(ctx)
			return ctx.Err()
		}
	}

	t.Run("majority of masters frozen", func(t *testing.T) {
		servers := redistest.MustStartN(t, 3)
		hr := newHookRecorder()
		l := mustLocker(t, servers, config(hr))
		var cause error
		done := startBlocking(t, l, "k", waitForCancel(&cause))

		servers[0].Pause()
		servers[1].Pause()
		defer servers[0].Resume()
		defer servers[1].Resume()

		err := mustReceive(t, done, 5*time.Second, "Do to return")
		require.ErrorIs(t, err, ErrLeaseLost)
		require.NotErrorIs(t, err, context.Canceled, "the cancellation Do caused is not reported as the caller's")
		require.ErrorIs(t, cause, ErrLeaseLost, "fn's ctx is cancelled with cause ErrLeaseLost")
		require.Equal(t, int64(1), hr.lost.Load())
	})

	t.Run("majority of masters restarted without persistence", func(t *testing.T) {
		servers := redistest.MustStartN(t, 3)
		hr := newHookRecorder()
		l := mustLocker(t, servers, config(hr))
		other := mustLocker(t, servers, Config{TTL: ttl})
		errConflict := errors.New("version conflict")
		done := startBlocking(t, l, "k", func(ctx context.Context) error {
			<-ctx.Done()
			return fmt.Errorf("commit: %w", errConflict) // what a fenced write reports
		})

		servers[0].Restart()
		servers[1].Restart()
		// The restarted masters forgot the lease: another process can take the key at
		// once, while the first holder still runs. This is why a lease is no fence.
		require.Eventually(t, func() bool {
			lease, err := other.TryAcquire(bg, "k")
			if err == nil {
				_ = lease.Release(bg)
			}
			return err == nil
		}, 5*time.Second, 5*time.Millisecond)

		err := mustReceive(t, done, 5*time.Second, "Do to return")
		require.ErrorIs(t, err, ErrLeaseLost)
		require.ErrorIs(t, err, errConflict, "fn's own error is kept")
		require.Equal(t, int64(1), hr.lost.Load())
	})

	t.Run("clock jump past the validity", func(t *testing.T) {
		// A GC pause or a stalled process looks the same: the clock moved on while the
		// holder was not renewing.
		servers := redistest.MustStartN(t, 3)
		hr := newHookRecorder()
		var offset atomic.Int64
		cfg := config(hr)
		cfg.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		l := mustLocker(t, servers, cfg)
		var cause error
		done := startBlocking(t, l, "k", waitForCancel(&cause))

		offset.Store(int64(ttl))
		err := mustReceive(t, done, 5*time.Second, "Do to return")
		require.ErrorIs(t, err, ErrLeaseLost)
		require.ErrorIs(t, cause, ErrLeaseLost)
		require.Equal(t, int64(1), hr.lost.Load())
	})

	t.Run("fn that completes despite the loss returns nil", func(t *testing.T) {
		servers := redistest.MustStartN(t, 3)
		hr := newHookRecorder()
		var offset atomic.Int64
		cfg := config(hr)
		cfg.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		l := mustLocker(t, servers, cfg)
		done := startBlocking(t, l, "k", func(context.Context) error {
			<-hr.lostCh // ignores its ctx and finishes its work anyway
			return nil
		})

		offset.Store(int64(ttl))
		require.NoError(t, mustReceive(t, done, 5*time.Second, "Do to return"))
		require.Equal(t, int64(1), hr.lost.Load())
	})
}
