package lock

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redsync/redsync/v4"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

func noop(context.Context) error { return nil }

// mustNotRun returns an fn that fails the test when it runs.
func mustNotRun(t *testing.T) func(context.Context) error {
	return func(context.Context) error {
		t.Error("fn ran without the lease")
		return nil
	}
}

func TestMutualExclusion(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	const (
		lockers    = 4 // simulated processes, each with its own clients
		goroutines = 6 // per Locker
		rounds     = 5 // Do calls per goroutine
		key        = "acct:hot"
	)
	cfg := Config{RetryDelayMin: time.Millisecond, RetryDelayMax: 5 * time.Millisecond, WaitTimeout: 20 * time.Second}
	counterKey := "test:counter"
	rc := servers[0].Client()

	var (
		inFlight, overlaps atomic.Int64
		unguarded          int // data race (reported by -race) if two fns overlap
	)
	fn := func(ctx context.Context) error {
		if inFlight.Add(1) != 1 {
			overlaps.Add(1)
		}
		defer inFlight.Add(-1)
		// A read-modify-write on Redis without atomicity: only mutual exclusion keeps
		// updates from being lost.
		v, err := rc.Get(ctx, counterKey).Int()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		runtime.Gosched()
		unguarded++
		return rc.Set(ctx, counterKey, v+1, 0).Err()
	}

	errs := make(chan error, lockers*goroutines*rounds)
	var wg sync.WaitGroup
	for range lockers {
		l := mustLocker(t, servers, cfg)
		for range goroutines {
			wg.Go(func() {
				for range rounds {
					errs <- l.Do(context.Background(), key, fn)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	const total = lockers * goroutines * rounds
	require.Zero(t, overlaps.Load(), "fn was entered concurrently")
	require.Equal(t, total, unguarded)
	got, err := rc.Get(context.Background(), counterKey).Int()
	require.NoError(t, err)
	require.Equal(t, total, got, "lost updates on the Redis counter")
}

func TestQuorum(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	const wait = time.Second
	hr := newHookRecorder()
	l := mustLocker(t, servers, Config{WaitTimeout: wait, Hooks: hr.hooks()})
	ctx := context.Background()

	// Each subtest uses its own key: a paused master replays the commands it missed
	// when it resumes and may keep a stale half-lease for one TTL.
	doOnce := func(key string) (ran bool, err error) {
		err = l.Do(ctx, key, func(context.Context) error { ran = true; return nil })
		return ran, err
	}

	t.Run("all masters up", func(t *testing.T) {
		ran, err := doOnce("q1")
		require.NoError(t, err)
		require.True(t, ran)
	})

	t.Run("a frozen minority master costs at most AttemptTimeout", func(t *testing.T) {
		servers[2].Pause()
		defer servers[2].Resume()
		start := time.Now()
		ran, err := doOnce("q2")
		elapsed := time.Since(start)
		require.NoError(t, err)
		require.True(t, ran)
		// Acquisition waits AttemptTimeout (100ms here) for the frozen master; release
		// returns at a majority. Waiting for it on release would cost the release timeout
		// (1s), redsync's own default attempt timeout would be 400ms.
		require.Less(t, elapsed, 300*time.Millisecond)
	})

	t.Run("one master killed", func(t *testing.T) {
		servers[0].Kill()
		ran, err := doOnce("q3")
		require.NoError(t, err)
		require.True(t, ran)
	})

	t.Run("two masters killed", func(t *testing.T) {
		servers[1].Kill()
		failedBefore := hr.acquireFailed.Load()
		start := time.Now()
		ran, err := doOnce("q4")
		elapsed := time.Since(start)
		require.ErrorIs(t, err, ErrNotAcquired)
		require.NotErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, redsync.ErrFailed)
		require.False(t, ran)
		require.GreaterOrEqual(t, elapsed, wait-50*time.Millisecond, "gave up before WaitTimeout")
		require.Less(t, elapsed, wait+2*time.Second, "kept waiting long after WaitTimeout")
		require.Equal(t, failedBefore+1, hr.acquireFailed.Load())
	})

	t.Run("masters restarted, same Locker", func(t *testing.T) {
		servers[0].Restart()
		servers[1].Restart()
		// The clients reconnect on their own; give them a few Do calls to do so.
		deadline := time.Now().Add(10 * time.Second)
		for tries := 1; ; tries++ {
			ran, err := doOnce("q5")
			if err == nil {
				require.True(t, ran)
				t.Logf("succeeded after %d Do call(s)", tries)
				break
			}
			require.ErrorIs(t, err, ErrNotAcquired)
			require.True(t, time.Now().Before(deadline), "no lease after the masters came back: %v", err)
		}
	})
}

func TestContextCancellation(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	holder := mustLocker(t, servers, Config{})
	hr := newHookRecorder()
	l := mustLocker(t, servers, Config{WaitTimeout: 10 * time.Second, Hooks: hr.hooks()})
	bg := context.Background()

	held, err := holder.Acquire(bg, "held")
	require.NoError(t, err)
	t.Cleanup(func() { _ = held.Release(bg) })

	assertCtxErr := func(t *testing.T, err, want error) {
		t.Helper()
		require.ErrorIs(t, err, want)
		require.NotErrorIs(t, err, ErrNotAcquired)
		require.NotErrorIs(t, err, redsync.ErrFailed)
	}

	t.Run("deadline while contending on Redis", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(bg, 150*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := l.Do(ctx, "held", mustNotRun(t))
		assertCtxErr(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 2*time.Second, "the ctx deadline, not WaitTimeout, bounds the wait")
	})

	t.Run("cancel while contending on Redis", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		defer cancel()
		stop := time.AfterFunc(100*time.Millisecond, cancel) // the stimulus, not a synchronisation
		defer stop.Stop()
		start := time.Now()
		err := l.Do(ctx, "held", mustNotRun(t))
		assertCtxErr(t, err, context.Canceled)
		require.Less(t, time.Since(start), 2*time.Second)
	})

	t.Run("cancel while queued locally", func(t *testing.T) {
		started, release := make(chan struct{}), make(chan struct{})
		first := doAsync(bg, l, "local", func(context.Context) error {
			close(started)
			<-release
			return nil
		})
		mustReceive(t, started, 5*time.Second, "first fn to start")

		ctx, cancel := context.WithCancel(bg)
		second := doAsync(ctx, l, "local", mustNotRun(t))
		require.Eventually(t, func() bool { return l.queue.waiting("local") == 1 }, 5*time.Second, time.Millisecond)
		cancel()
		assertCtxErr(t, mustReceive(t, second, 5*time.Second, "queued Do to return"), context.Canceled)
		require.Zero(t, l.queue.waiting("local"), "a cancelled waiter leaves the queue")

		close(release)
		require.NoError(t, mustReceive(t, first, 5*time.Second, "first Do to return"))
		// The slot was handed back, not leaked.
		require.NoError(t, l.Do(bg, "local", noop))
		l.queue.mu.Lock()
		defer l.queue.mu.Unlock()
		require.Empty(t, l.queue.slots)
	})

	t.Run("already cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		cancel()
		assertCtxErr(t, l.Do(ctx, "free", mustNotRun(t)), context.Canceled)
		_, err := l.Acquire(ctx, "free")
		assertCtxErr(t, err, context.Canceled)
	})

	t.Run("AcquireFailed reports each failure", func(t *testing.T) {
		require.Equal(t, int64(5), hr.acquireFailed.Load())
		require.Equal(t, int64(2), hr.acquired.Load(), "the two Do calls on the local key")
	})
}

func TestTry(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	a := mustLocker(t, servers, Config{})
	b := mustLocker(t, servers, Config{})
	bg := context.Background()

	t.Run("TryDo on a key held by another process", func(t *testing.T) {
		lease, err := a.Acquire(bg, "k1")
		require.NoError(t, err)
		defer lease.Release(bg)
		start := time.Now()
		err = b.TryDo(bg, "k1", mustNotRun(t))
		require.ErrorIs(t, err, ErrNotAcquired)
		require.Less(t, time.Since(start), 500*time.Millisecond, "one attempt, no waiting")
	})

	t.Run("TryDo on a key held in this process", func(t *testing.T) {
		started, release := make(chan struct{}), make(chan struct{})
		done := doAsync(bg, a, "k2", func(context.Context) error { close(started); <-release; return nil })
		mustReceive(t, started, 5*time.Second, "fn to start")
		err := a.TryDo(bg, "k2", mustNotRun(t))
		require.ErrorIs(t, err, ErrNotAcquired)
		require.ErrorContains(t, err, "held in this process")
		close(release)
		require.NoError(t, mustReceive(t, done, 5*time.Second, "Do to return"))
	})

	t.Run("TryDo and TryAcquire on a free key", func(t *testing.T) {
		ran := false
		require.NoError(t, b.TryDo(bg, "k3", func(context.Context) error { ran = true; return nil }))
		require.True(t, ran)

		lease, err := b.TryAcquire(bg, "k3")
		require.NoError(t, err)
		_, err = a.TryAcquire(bg, "k3")
		require.ErrorIs(t, err, ErrNotAcquired)
		require.NoError(t, lease.Release(bg))
		lease, err = a.TryAcquire(bg, "k3")
		require.NoError(t, err, "free again after Release")
		require.NoError(t, lease.Release(bg))
	})
}

func TestLease(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	bg := context.Background()
	const prefix = "test:lease:"
	hr := newHookRecorder()
	const ttl = 2 * time.Second
	l := mustLocker(t, servers, Config{Prefix: prefix, TTL: ttl, Hooks: hr.hooks()})
	other := mustLocker(t, servers, Config{Prefix: prefix, TTL: ttl})

	before := time.Now()
	lease, err := l.Acquire(bg, "partition:7")
	require.NoError(t, err)
	require.Equal(t, "partition:7", lease.Key())

	t.Run("token is the owner value on every master", func(t *testing.T) {
		require.NotEmpty(t, lease.Token())
		for _, s := range servers {
			v, err := s.Client().Get(bg, prefix+"partition:7").Result()
			require.NoError(t, err)
			require.Equal(t, lease.Token(), v)
		}
	})

	t.Run("until is TTL minus drift from the start of the attempt", func(t *testing.T) {
		until := lease.Until()
		require.False(t, until.Before(before.Add(ttl-driftAllowance(ttl))))
		require.True(t, until.Before(time.Now().Add(ttl)))
	})

	t.Run("others cannot take it", func(t *testing.T) {
		_, err := other.TryAcquire(bg, "partition:7")
		require.ErrorIs(t, err, ErrNotAcquired)
	})

	t.Run("extend renews the validity", func(t *testing.T) {
		old := lease.Until()
		before := time.Now()
		require.NoError(t, lease.Extend(bg))
		require.False(t, lease.Until().Before(before.Add(ttl-driftAllowance(ttl))))
		require.False(t, lease.Until().Before(old))
		require.Equal(t, int64(1), hr.renewed.Load())
		pttl, err := servers[0].Client().PTTL(bg, prefix+"partition:7").Result()
		require.NoError(t, err)
		require.Greater(t, pttl, ttl-500*time.Millisecond)
	})

	t.Run("extend with a cancelled ctx does not lose the lease", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		cancel()
		err := lease.Extend(ctx)
		require.ErrorIs(t, err, context.Canceled)
		require.NotErrorIs(t, err, ErrLeaseLost)
		require.NoError(t, lease.Extend(bg))
	})

	t.Run("release frees the key everywhere", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		cancel() // Release ignores the caller's cancellation
		require.NoError(t, lease.Release(ctx))
		// Release returns once a majority dropped the key; the last master follows.
		require.Eventually(t, func() bool {
			for _, s := range servers {
				if n, err := s.Client().Exists(bg, prefix+"partition:7").Result(); err != nil || n != 0 {
					return false
				}
			}
			return true
		}, 5*time.Second, time.Millisecond)
		require.NoError(t, lease.Release(bg), "second release is a no-op")
		require.ErrorIs(t, lease.Extend(bg), ErrLeaseLost)
		taken, err := other.TryAcquire(bg, "partition:7")
		require.NoError(t, err)
		require.NotEqual(t, lease.Token(), taken.Token())
		require.NoError(t, taken.Release(bg))
	})

	t.Run("an expired lease is lost", func(t *testing.T) {
		short := mustLocker(t, servers, Config{Prefix: prefix, TTL: 100 * time.Millisecond, Hooks: hr.hooks()})
		lease, err := short.Acquire(bg, "short")
		require.NoError(t, err)
		// Wait for the masters themselves to expire the key.
		require.Eventually(t, func() bool {
			for _, s := range servers {
				if n, err := s.Client().Exists(bg, prefix+"short").Result(); err != nil || n != 0 {
					return false
				}
			}
			return true
		}, 5*time.Second, 5*time.Millisecond)
		lostBefore := hr.lost.Load()
		require.ErrorIs(t, lease.Extend(bg), ErrLeaseLost)
		require.Equal(t, lostBefore+1, hr.lost.Load())
		require.ErrorIs(t, lease.Extend(bg), ErrLeaseLost, "lost stays lost")
		require.Equal(t, lostBefore+1, hr.lost.Load(), "Lost fires once")
		require.ErrorIs(t, lease.Release(bg), ErrLeaseLost)
	})
}

func TestSafetyMargin(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	bg := context.Background()
	const ttl = 8 * time.Second

	t.Run("fn does not start when the acquisition leaves too little validity", func(t *testing.T) {
		// Every reading of the clock is one TTL later than the one before: whatever an
		// acquisition yields looks expired by the time it returns.
		var ticks atomic.Int64
		clock := func() time.Time { return time.Now().Add(time.Duration(ticks.Add(1)) * ttl) }
		l := mustLocker(t, servers, Config{TTL: ttl, WaitTimeout: 300 * time.Millisecond, Clock: clock})
		err := l.Do(bg, "slow", mustNotRun(t))
		require.ErrorIs(t, err, ErrNotAcquired)
		require.ErrorContains(t, err, "below the safety margin")

		// The refused leases were released, not left to expire.
		lease, err := mustLocker(t, servers, Config{TTL: ttl}).TryAcquire(bg, "slow")
		require.NoError(t, err)
		require.NoError(t, lease.Release(bg))
	})
}

func TestDoErrors(t *testing.T) {
	servers := redistest.MustStartN(t, 1)
	l := mustLocker(t, servers, Config{})
	bg := context.Background()

	t.Run("fn error is returned unchanged", func(t *testing.T) {
		want := errors.New("insufficient funds")
		require.Equal(t, want, l.Do(bg, "k", func(context.Context) error { return want }))
	})
	t.Run("lease released after an fn error", func(t *testing.T) {
		_ = l.Do(bg, "k2", func(context.Context) error { return errors.New("boom") })
		lease, err := mustLocker(t, servers, Config{}).TryAcquire(bg, "k2")
		require.NoError(t, err)
		require.NoError(t, lease.Release(bg))
	})
	t.Run("empty key and nil fn", func(t *testing.T) {
		require.ErrorContains(t, l.Do(bg, "", noop), "empty key")
		require.ErrorContains(t, l.Do(bg, "k", nil), "nil fn")
	})
	t.Run("single master works", func(t *testing.T) {
		require.Equal(t, 1, l.Quorum())
		for i := range 3 {
			require.NoError(t, l.Do(bg, fmt.Sprint("single", i), noop))
		}
	})
}
