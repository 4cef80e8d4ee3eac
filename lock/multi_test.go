package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/internal/redistest"
)

// TestDoAllExcludesAndNeverDeadlocks: several processes run DoAll on random overlapping
// key sets, listed in random orders. Every call completes (no two wait for each other in a
// cycle), and no key is ever held by two callers at once.
func TestDoAllExcludesAndNeverDeadlocks(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	const (
		lockers    = 3
		goroutines = 6
		rounds     = 15
		nkeys      = 5
	)
	cfg := Config{RetryDelayMin: time.Millisecond, RetryDelayMax: 5 * time.Millisecond, WaitTimeout: 30 * time.Second}
	var holders [nkeys]atomic.Int64
	var overlaps, calls atomic.Int64
	var recs []*hookRecorder
	errs := make(chan error, lockers*goroutines*rounds)
	var wg sync.WaitGroup
	for i := range lockers {
		rec := newHookRecorder()
		recs = append(recs, rec)
		cfg := cfg
		cfg.Hooks = rec.hooks()
		l := mustLocker(t, servers, cfg)
		for g := range goroutines {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(g)))
			wg.Go(func() {
				for range rounds {
					var idx []int
					for _, k := range rng.Perm(nkeys)[:2+rng.IntN(2)] {
						idx = append(idx, k)
					}
					keys := make([]string, len(idx))
					for j, k := range idx {
						keys[j] = fmt.Sprintf("acct:%d", k)
					}
					errs <- l.DoAll(context.Background(), keys, func(ctx context.Context) error {
						calls.Add(1)
						for _, k := range idx {
							if holders[k].Add(1) != 1 {
								overlaps.Add(1)
							}
						}
						time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond) // hold it a moment
						for _, k := range idx {
							holders[k].Add(-1)
						}
						return ctx.Err()
					})
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, lockers*goroutines*rounds, calls.Load())
	require.Zero(t, overlaps.Load(), "a key was held by two callers at once")
	for i, rec := range recs {
		require.Zero(t, rec.acquireFailed.Load(), "locker %d: a key found busy and then waited for is no failed acquisition", i)
	}
}

// TestDoAllKeepsLeasesWhileWaiting: when DoAll waits for a busy key longer than the lease
// TTL, the leases it took before are renewed meanwhile, so fn starts holding every key
// (nobody else can take the first one) with a live context. The Acquired hook counts each
// key once, although the first, optimistic round took and gave back a lease.
func TestDoAllKeepsLeasesWhileWaiting(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a failure must not hang
	defer cancel()
	const ttl = 500 * time.Millisecond
	cfg := Config{TTL: ttl, RetryDelayMin: time.Millisecond, RetryDelayMax: 5 * time.Millisecond, WaitTimeout: 10 * time.Second}
	rec := newHookRecorder()
	acfg := cfg
	acfg.Hooks = rec.hooks()
	a, b, c := mustLocker(t, servers, acfg), mustLocker(t, servers, cfg), mustLocker(t, servers, cfg)

	held := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- b.Do(ctx, "k2", func(ctx context.Context) error {
			close(held)
			// The stimulus: k2 stays busy for several TTLs of the lease DoAll holds on k1.
			return backoff.Wait(ctx, 4*ttl)
		})
	}()
	<-held
	err := a.DoAll(ctx, []string{"k1", "k2"}, func(fnCtx context.Context) error {
		require.NoError(t, fnCtx.Err(), "fn starts with live leases")
		err := c.TryDo(ctx, "k1", mustNotRun(t))
		require.ErrorIs(t, err, ErrNotAcquired, "k1 is still held by DoAll")
		return nil
	})
	require.NoError(t, err)
	require.NoError(t, <-done)
	require.EqualValues(t, 2, rec.acquired.Load(), "one Acquired per key")
	require.Zero(t, rec.acquireFailed.Load())
	require.Zero(t, rec.lost.Load())
	require.Positive(t, rec.renewed.Load(), "k1 was renewed while DoAll waited for k2")

	require.ErrorContains(t, a.DoAll(ctx, nil, mustNotRun(t)), "no keys")
}

// TestDoAll covers what DoAll shares with Do: fn runs holding every key (others cannot
// take any of them meanwhile, and can afterwards), a busy key is waited for, duplicate
// keys are one key, fn's error comes back unchanged, and a lease lost while fn runs
// cancels fn's context.
func TestDoAll(t *testing.T) {
	servers := redistest.MustStartN(t, 3)
	ctx := context.Background()
	cfg := Config{TTL: 2 * time.Second, RetryDelayMin: time.Millisecond, RetryDelayMax: 5 * time.Millisecond, WaitTimeout: 10 * time.Second}
	a, b := mustLocker(t, servers, cfg), mustLocker(t, servers, cfg)

	t.Run("holds every key while fn runs", func(t *testing.T) {
		err := a.DoAll(ctx, []string{"k2", "k1", "k2"}, func(ctx context.Context) error {
			for _, k := range []string{"k1", "k2"} {
				err := b.TryDo(ctx, k, func(context.Context) error { return nil })
				require.ErrorIs(t, err, ErrNotAcquired, k)
			}
			return nil
		})
		require.NoError(t, err)
		for _, k := range []string{"k1", "k2"} {
			require.NoError(t, b.TryDo(ctx, k, func(context.Context) error { return nil }), "released: %s", k)
		}
	})

	t.Run("waits for a busy key", func(t *testing.T) {
		held := make(chan struct{})
		release := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- b.Do(ctx, "w2", func(context.Context) error { close(held); <-release; return nil })
		}()
		<-held
		var released atomic.Bool
		ran := make(chan error, 1)
		go func() {
			ran <- a.DoAll(ctx, []string{"w1", "w2"}, func(context.Context) error {
				if !released.Load() {
					return errors.New("ran while w2 was held elsewhere")
				}
				return nil
			})
		}()
		// DoAll found w2 busy, gave everything back, and now holds w1 (first in order)
		// while it waits for w2.
		require.Eventually(t, func() bool {
			return servers[0].Client().Exists(ctx, DefaultPrefix+"w1").Val() == 1
		}, 10*time.Second, time.Millisecond)
		released.Store(true)
		close(release)
		require.NoError(t, <-done)
		select {
		case err := <-ran:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("DoAll did not get the keys after they were released")
		}
	})

	t.Run("fn's error", func(t *testing.T) {
		boom := errors.New("boom")
		require.Equal(t, boom, a.DoAll(ctx, []string{"e1", "e2"}, func(context.Context) error { return boom }))
	})

	t.Run("a lost lease cancels fn", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second) // a failure must not hang
		defer cancel()
		err := a.DoAll(ctx, []string{"l1", "l2"}, func(ctx context.Context) error {
			// Another holder steals l2 on every master (as after an expiry).
			for _, s := range servers {
				require.NoError(t, s.Client().Set(ctx, DefaultPrefix+"l2", "thief", 0).Err())
			}
			<-ctx.Done()
			return ctx.Err()
		})
		require.ErrorIs(t, err, ErrLeaseLost)
	})
}
