package lock

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

func TestLocalQueue(t *testing.T) {
	t.Run("FIFO order", func(t *testing.T) {
		q := newLocalQueue()
		bg := context.Background()
		require.NoError(t, q.enter(bg, "k"))
		const n = 10
		var (
			mu    sync.Mutex
			order []int
			wg    sync.WaitGroup
		)
		for i := range n {
			wg.Go(func() {
				require.NoError(t, q.enter(bg, "k"))
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				q.leave("k")
			})
			// Enqueue strictly one after the other.
			require.Eventually(t, func() bool { return q.waiting("k") == i+1 }, 5*time.Second, time.Millisecond)
		}
		q.leave("k")
		wg.Wait()
		require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, order)
		require.Empty(t, q.slots)
	})

	t.Run("keys are independent", func(t *testing.T) {
		q := newLocalQueue()
		require.True(t, q.tryEnter("a"))
		require.True(t, q.tryEnter("b"))
		require.False(t, q.tryEnter("a"))
		q.leave("a")
		q.leave("b")
		require.Empty(t, q.slots)
	})

	t.Run("a waiter giving up never strands the slot", func(t *testing.T) {
		// Race cancellation against hand-over many times: whoever ends up with the slot
		// must be able to pass it on, and the queue must end empty.
		q := newLocalQueue()
		for range 200 {
			require.NoError(t, q.enter(context.Background(), "k"))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- q.enter(ctx, "k") }()
			require.Eventually(t, func() bool { return q.waiting("k") == 1 }, 5*time.Second, 10*time.Microsecond)
			go cancel()
			q.leave("k")
			if err := <-done; err == nil {
				q.leave("k") // the waiter got the slot before it saw the cancellation
			}
			cancel()
			q.mu.Lock()
			require.Empty(t, q.slots)
			q.mu.Unlock()
		}
	})
}

// TestLocalQueueingBoundsRedisTraffic shows that goroutines of one process waiting for one
// key do not all hit the masters: every Do costs exactly one SET per master, whereas the
// same goroutines spread over separate Lockers (no shared local queue) retry against Redis.
func TestLocalQueueingBoundsRedisTraffic(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	const n = 20
	bg := context.Background()

	run := func(t *testing.T, lockers []*Locker, key string) (sets int) {
		t.Helper()
		resetCommandStats(t, servers)
		var (
			wg      sync.WaitGroup
			startFn = make(chan struct{})
		)
		errs := make(chan error, n)
		for i := range n {
			l := lockers[i%len(lockers)]
			wg.Go(func() {
				errs <- l.Do(bg, key, func(context.Context) error {
					<-startFn
					time.Sleep(2 * time.Millisecond) // a little work under the lease
					return nil
				})
			})
		}
		// Let the first fn run only when every goroutine is already contending.
		if len(lockers) == 1 {
			require.Eventually(t, func() bool { return lockers[0].queue.waiting(key) == n-1 }, 5*time.Second, time.Millisecond)
		}
		close(startFn)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		return commandCalls(t, servers, "set")
	}

	t.Run("one Locker: one acquisition attempt per Do", func(t *testing.T) {
		hr := newHookRecorder()
		l := mustLocker(t, servers, Config{Hooks: hr.hooks()})
		sets := run(t, []*Locker{l}, "hot:1")
		t.Logf("%d Do calls in one Locker: %d SETs over %d masters", n, sets, len(servers))
		require.Equal(t, int64(n), hr.acquired.Load())
		// One attempt per Do: it reaches a majority of the masters at least, all of them
		// at most (WithFailFast may cancel the straggler's SET once a majority answered).
		require.GreaterOrEqual(t, sets, n*l.Quorum())
		require.LessOrEqual(t, sets, n*len(servers), "Do calls retried against Redis")
	})

	t.Run("separate Lockers: contention retries", func(t *testing.T) {
		lockers := make([]*Locker, n)
		for i := range lockers {
			lockers[i] = mustLocker(t, servers, Config{})
		}
		sets := run(t, lockers, "hot:2")
		t.Logf("%d Do calls in %d Lockers: %d SETs over %d masters", n, n, sets, len(servers))
		require.Greater(t, sets, n*len(servers), "the measurement must see retries when nothing queues locally")
	})
}
