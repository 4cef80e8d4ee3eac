package lock

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// mustPipelinePool returns a pool over a fresh client to s (MasterOptions, with a read
// timeout long enough for the BLPOP gate), stopped when the test ends.
func mustPipelinePool(t *testing.T, s *redistest.Server) *pipelinePool {
	t.Helper()
	opts := MasterOptions(s.Addr())
	opts.ReadTimeout = 10 * time.Second
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	p := newPipelinePool(c)
	t.Cleanup(p.close)
	return p
}

// blockWriter sends a BLPOP on gate through p and returns once the master reports it
// blocked, that is once p's writer waits for that pipeline. Pushing to gate frees it; the
// returned channel then yields the BLPOP's error.
func blockWriter(t *testing.T, p *pipelinePool, s *redistest.Server, gate string) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	done := make(chan error, 1)
	cmd := redis.NewStringSliceCmd(ctx, "blpop", gate, 0)
	go func() {
		if err := p.do(&call{ctx: ctx, cmd: cmd}); err != nil {
			done <- err
			return
		}
		done <- cmd.Err()
	}()
	require.Eventually(t, func() bool {
		info, err := s.Client().Info(context.Background(), "clients").Result()
		return err == nil && strings.Contains(info, "blocked_clients:1\r\n")
	}, 5*time.Second, time.Millisecond, "BLPOP to block")
	return done
}

func TestPipelinePool(t *testing.T) {
	s := redistest.MustStart(t)
	bg := context.Background()

	t.Run("a lone command is sent at once, one pipeline each", func(t *testing.T) {
		p := mustPipelinePool(t, s)
		conn, err := p.Get(bg)
		require.NoError(t, err)
		for i := range 5 {
			ok, err := conn.SetNX(fmt.Sprint("lone:", i), "v", time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
		}
		require.Equal(t, int64(5), p.pipelines.Load())
	})

	t.Run("commands queued while a pipeline is in flight share the next one", func(t *testing.T) {
		p := mustPipelinePool(t, s)
		gate := blockWriter(t, p, s, "gate:1")

		const n = 50
		type result struct {
			ok  bool
			err error
		}
		results := make(chan result, n+1)
		for i := range n + 1 {
			key := fmt.Sprint("batched:", i)
			if i == n {
				key = "batched:0" // taken by the first of them
			}
			go func() {
				ctx, cancel := context.WithTimeout(bg, 10*time.Second)
				defer cancel()
				conn, err := p.Get(ctx)
				if err != nil {
					results <- result{err: err}
					return
				}
				ok, err := conn.SetNX(key, "v", time.Minute)
				results <- result{ok, err}
			}()
		}
		require.Eventually(t, func() bool { return len(p.calls) == n+1 }, 5*time.Second, time.Millisecond)
		require.NoError(t, s.Client().RPush(bg, "gate:1", "go").Err())
		require.NoError(t, mustReceive(t, gate, 5*time.Second, "BLPOP to return"))

		granted := 0
		for range n + 1 {
			r := mustReceive(t, results, 5*time.Second, "SET NX result")
			require.NoError(t, r.err)
			if r.ok {
				granted++
			}
		}
		require.Equal(t, n, granted, "every key once")
		require.Equal(t, int64(2), p.pipelines.Load(), "the BLPOP, then all the queued SET NX")
	})

	t.Run("a caller whose context ends stops waiting; its unsent command is dropped", func(t *testing.T) {
		p := mustPipelinePool(t, s)
		gate := blockWriter(t, p, s, "gate:2")

		ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
		defer cancel()
		conn, err := p.Get(ctx)
		require.NoError(t, err)
		start := time.Now()
		_, err = conn.SetNX("abandoned", "v", time.Minute)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 2*time.Second)

		require.NoError(t, s.Client().RPush(bg, "gate:2", "go").Err())
		require.NoError(t, mustReceive(t, gate, 5*time.Second, "BLPOP to return"))
		// A later command on the same writer is answered after the abandoned one would
		// have been: had it been sent, the key would exist by now.
		conn, err = p.Get(bg)
		require.NoError(t, err)
		_, err = conn.Get("abandoned")
		require.NoError(t, err)
		n, err := s.Client().Exists(bg, "abandoned").Result()
		require.NoError(t, err)
		require.Zero(t, n)
	})

	t.Run("scripts: EVAL first, EVALSHA once cached, EVAL again after NOSCRIPT", func(t *testing.T) {
		p := mustPipelinePool(t, s)
		src := "return redis.call('get', KEYS[1])"
		sum := sha1.Sum([]byte(src))
		script := redsyncredis.NewScript(1, src, hex.EncodeToString(sum[:]))
		require.NoError(t, s.Client().Set(bg, "script:k", "hello", 0).Err())
		require.NoError(t, s.Client().ScriptFlush(bg).Err())
		servers := []*redistest.Server{s}
		resetCommandStats(t, servers)

		eval := func() {
			t.Helper()
			conn, err := p.Get(bg)
			require.NoError(t, err)
			v, err := conn.Eval(script, "script:k")
			require.NoError(t, err)
			require.Equal(t, "hello", v)
		}
		eval()
		require.Equal(t, 1, commandCalls(t, servers, "eval"))
		require.Zero(t, commandCalls(t, servers, "evalsha"))
		eval()
		require.Equal(t, 1, commandCalls(t, servers, "eval"), "cached: EVALSHA")
		require.Equal(t, 1, commandCalls(t, servers, "evalsha"))

		require.NoError(t, s.Client().ScriptFlush(bg).Err()) // as a restarted master
		eval()
		require.Equal(t, 2, commandCalls(t, servers, "eval"), "NOSCRIPT answered with EVAL")
		eval()
		require.Equal(t, 2, commandCalls(t, servers, "eval"))
	})

	t.Run("nil replies", func(t *testing.T) {
		p := mustPipelinePool(t, s)
		conn, err := p.Get(bg)
		require.NoError(t, err)
		v, err := conn.Get("missing")
		require.NoError(t, err)
		require.Empty(t, v)
		ok, err := conn.Set("present", "v")
		require.NoError(t, err)
		require.True(t, ok)
		ttl, err := conn.PTTL("present")
		require.NoError(t, err)
		require.Less(t, ttl, time.Duration(0), "no expiry")
	})
}

func TestClose(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	bg := context.Background()
	l, err := New(mustClients(t, servers), Config{Logger: testLogger(t)})
	require.NoError(t, err)

	require.NoError(t, l.Do(bg, "before", noop))
	lease, err := l.Acquire(bg, "held")
	require.NoError(t, err)

	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, l.Close()) })
	wg.Go(func() { require.NoError(t, l.Close()) })
	wg.Wait()
	for _, p := range l.pools {
		mustReceive(t, p.done, 5*time.Second, "writer to stop")
	}

	start := time.Now()
	err = l.Do(bg, "after", mustNotRun(t))
	require.ErrorIs(t, err, ErrNotAcquired)
	require.ErrorIs(t, err, errClosed)
	_, err = l.TryAcquire(bg, "after")
	require.ErrorIs(t, err, ErrNotAcquired)
	require.Less(t, time.Since(start), time.Second, "no waiting after Close")

	require.ErrorIs(t, lease.Extend(bg), ErrLeaseLost)
	require.Error(t, lease.Release(bg))
	require.NoError(t, l.Close(), "again")
}
