// Package lock provides per-key leases (Redlock, over redsync) on N independent Redis
// masters: a lease is held when a majority (N/2+1) of the masters granted it, for a
// validity of TTL minus the time the acquisition took minus a clock drift allowance.
//
// Do runs a function under a lease, renews the lease while the function runs and cancels
// the function's context when the lease is lost. Goroutines of one process that want the
// same key queue in memory first, so only one of them at a time contends for the lease on
// Redis. Acquire and TryAcquire hand out a Lease for callers that hold a key for long and
// renew it themselves (a relay owning a partition).
//
// A lease is not a fencing token: a holder paused past its validity (GC, network stall,
// clock jump, a master restarted without persistence) may still act after another process
// acquired the key. Writers guarded by a lease must also check a version (compare-and-set)
// in the store they write to. See docs/locking.md.
//
// A Locker sends its lease commands through one long-lived writer goroutine per master,
// which pipelines the commands of concurrent callers; Close stops them.
package lock

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-redsync/redsync/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/backoff"
)

var (
	// ErrNotAcquired means no lease could be obtained within the wait: the key stayed held
	// by someone else or no majority of the masters answered. The error returned is a
	// *NotAcquiredError, whose Held field tells the two apart.
	ErrNotAcquired = errors.New("lock: not acquired")
	// ErrLeaseLost means a held lease expired, could not be renewed, or kept less validity
	// than the safety margin; work under it must stop.
	ErrLeaseLost = errors.New("lock: lease lost")
	// ErrNoMasters is returned by New when it is given no Redis masters.
	ErrNoMasters = errors.New("lock: no masters")
)

// Locker hands out leases on keys. It is safe for concurrent use. One Locker per process
// (per set of masters) is intended: its local queue only serialises its own goroutines.
type Locker struct {
	cfg     Config
	rs      *redsync.Redsync
	masters int
	queue   *localQueue

	pools     []*pipelinePool // one batching writer per master
	closeOnce sync.Once
}

// New returns a Locker over masters, independent Redis servers (not replicas of each
// other, not one cluster). A lease needs len(masters)/2+1 of them; use an odd number (1 for
// development, 3 or 5 in production). Zero Config fields take defaults.
//
// The clients should be built with ContextTimeoutEnabled (and short dial/read/write
// timeouts) so that a frozen master cannot hold an attempt beyond its deadline; New logs a
// warning for *redis.Client masters without it.
//
// New starts one goroutine per master that sends the lease commands of all concurrent
// callers to that master as pipelines; Close stops them. The Locker does not close the
// clients, which stay the caller's.
//
// New returns ErrNoMasters for an empty masters slice, an error for a nil client, and the
// error of cfg.Validate for an invalid Config.
func New(masters []redis.UniversalClient, cfg Config) (*Locker, error) {
	if len(masters) == 0 {
		return nil, ErrNoMasters
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	for i, m := range masters {
		if m == nil {
			return nil, fmt.Errorf("lock: master %d is nil", i)
		}
		if c, ok := m.(*redis.Client); ok && !c.Options().ContextTimeoutEnabled {
			cfg.Logger.Warn("lock: master client without ContextTimeoutEnabled; a frozen master can stall lease operations up to its read timeout",
				"master", i, "addr", c.Options().Addr)
		}
	}
	pools := make([]*pipelinePool, len(masters))
	for i, m := range masters {
		pools[i] = newPipelinePool(m)
	}
	return &Locker{
		cfg:     cfg,
		rs:      redsync.New(redsyncPools(pools)...),
		masters: len(masters),
		queue:   newLocalQueue(),
		pools:   pools,
	}, nil
}

// Close stops the Locker's per-master writer goroutines and returns nil. It waits for
// commands already sent to finish, which takes at most the longest deadline among them
// (about a second). It does not close the master clients.
//
// Call Close after the Locker's users have stopped. Afterwards Do, TryDo, Acquire and
// TryAcquire return an error wrapping ErrNotAcquired, Extend returns an error wrapping
// ErrLeaseLost, and Release fails; leases not released expire at their TTL. A Do running
// during Close has its lease reported lost at its next renewal. Calling Close again is a
// no-op. A Locker that is never closed keeps its idle writers (one goroutine per master)
// for the life of the process.
func (l *Locker) Close() error {
	l.closeOnce.Do(func() { closePools(l.pools) })
	return nil
}

// closed reports whether Close was called.
func (l *Locker) closed() bool {
	return len(l.pools) > 0 && l.pools[0].ctx.Err() != nil
}

// MasterOptions returns go-redis options suited to a lock master at addr: context
// deadlines reach the socket (ContextTimeoutEnabled), short dial/read/write timeouts, and
// no client-side retries (the Locker retries whole attempts itself, with jitter, within
// its own deadlines). Adjust fields such as Password or TLSConfig before use.
func MasterOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		DialTimeout:           250 * time.Millisecond,
		ReadTimeout:           500 * time.Millisecond,
		WriteTimeout:          500 * time.Millisecond,
		MaxRetries:            -1,
		DialerRetries:         1,
	}
}

// Quorum returns how many masters must grant a lease: len(masters)/2+1.
func (l *Locker) Quorum() int { return l.masters/2 + 1 }

// Do runs fn while holding the lease for key and returns fn's error.
//
// Goroutines of this Locker that call Do (or Acquire) for the same key wait in a local FIFO
// queue; only the head of the queue contends for the lease on Redis. Waiting (queue plus
// attempts) is bounded by the earlier of ctx's deadline and Config.WaitTimeout. fn is only
// started when at least Config.SafetyMargin of validity remains.
//
// While fn runs the lease is renewed every Config.ExtendEvery. When renewal fails or the
// validity drops below the safety margin, the context passed to fn is cancelled with cause
// ErrLeaseLost. The lease is released when fn returns, with a context that ignores ctx's
// cancellation and a short timeout of its own.
//
// Do returns:
//   - an error wrapping ErrNotAcquired when no lease was obtained within the wait;
//   - an error wrapping ctx.Err() (context.Canceled or context.DeadlineExceeded) when ctx
//     ended while waiting, never ErrNotAcquired or a redsync error;
//   - nil when fn returned nil, even if the lease was lost meanwhile (fn completed; the
//     loss is reported through Hooks.Lost only);
//   - an error wrapping ErrLeaseLost when fn failed after the lease was lost; it also wraps
//     fn's error unless that error is only the cancellation Do caused;
//   - otherwise fn's error, unchanged.
func (l *Locker) Do(ctx context.Context, key string, fn func(ctx context.Context) error) error {
	return l.do(ctx, key, fn, false)
}

// TryDo is Do without waiting: if key is held (by this process or, after one attempt,
// on the masters) it returns an error wrapping ErrNotAcquired at once and fn does not run.
// Its other results are those of Do.
func (l *Locker) TryDo(ctx context.Context, key string, fn func(ctx context.Context) error) error {
	return l.do(ctx, key, fn, true)
}

func (l *Locker) do(ctx context.Context, key string, fn func(ctx context.Context) error, try bool) error {
	if fn == nil {
		return errors.New("lock: nil fn")
	}
	lease, err := l.obtain(ctx, key, try, true)
	if err != nil {
		return err
	}
	defer l.queue.leave(key)
	return l.run(ctx, lease, fn)
}

// Acquire waits for the lease on key like Do does (local queue, then Redis attempts, bounded
// by ctx and Config.WaitTimeout) and returns it. The caller must renew it with Extend before
// Until minus the safety margin and release it with Release; the local queue slot is given
// up as soon as Acquire returns, so other goroutines of this process then contend on Redis.
//
// Acquire returns an error wrapping ErrNotAcquired when no lease was obtained within the
// wait, or an error wrapping ctx.Err() when ctx ended first.
func (l *Locker) Acquire(ctx context.Context, key string) (*Lease, error) {
	return l.obtain(ctx, key, false, false)
}

// TryAcquire makes a single attempt to take the lease on key ("take it if free") and
// returns it, or an error wrapping ErrNotAcquired when key is held (or no majority
// answered), or an error wrapping ctx.Err() when ctx is done.
func (l *Locker) TryAcquire(ctx context.Context, key string) (*Lease, error) {
	return l.obtain(ctx, key, true, false)
}

// obtain takes key's local queue slot, then the lease. With keepSlot the caller owns the
// slot on success and must leave it; on error the slot is never held.
func (l *Locker) obtain(ctx context.Context, key string, try, keepSlot bool) (lease *Lease, err error) {
	return l.obtainHooked(ctx, key, try, keepSlot, true)
}

// obtainHooked is obtain; without hooks it calls neither Hooks.Acquired nor
// Hooks.AcquireFailed (DoAll's first, optimistic round reports its own outcome).
func (l *Locker) obtainHooked(ctx context.Context, key string, try, keepSlot, hooks bool) (lease *Lease, err error) {
	start := l.cfg.Clock()
	defer func() {
		switch {
		case !hooks:
		case err != nil && l.cfg.Hooks.AcquireFailed != nil:
			l.cfg.Hooks.AcquireFailed(key, err)
		case err == nil && l.cfg.Hooks.Acquired != nil:
			l.cfg.Hooks.Acquired(key, l.cfg.Clock().Sub(start))
		}
	}()
	if key == "" {
		return nil, errors.New("lock: empty key")
	}
	if err := ctx.Err(); err != nil {
		return nil, ctxError(key, err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, l.cfg.WaitTimeout)
	defer cancel()

	if try {
		if !l.queue.tryEnter(key) {
			return nil, notAcquired(key, true, fmt.Sprintf("%q is held in this process", key))
		}
	} else if l.queue.enter(waitCtx, key) != nil {
		return nil, l.waitFailed(ctx, key, nil)
	}
	defer func() {
		if !keepSlot || err != nil {
			l.queue.leave(key)
		}
	}()

	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if try {
				return nil, notAcquired(key, heldElsewhere(lastErr), fmt.Sprintf("%q: %v", key, lastErr))
			}
			if backoff.Wait(waitCtx, l.retryDelay()) != nil {
				return nil, l.waitFailed(ctx, key, lastErr)
			}
		}
		if waitCtx.Err() != nil {
			return nil, l.waitFailed(ctx, key, lastErr)
		}
		if l.closed() {
			return nil, closedError(key)
		}
		got, attemptErr := l.attempt(ctx, key)
		if attemptErr != nil {
			lastErr = attemptErr
			continue
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			// Won the race against the caller's cancellation: give the lease back.
			l.releaseQuietly(ctx, got)
			return nil, ctxError(key, ctxErr)
		}
		return got, nil
	}
}

// attempt makes one acquisition attempt on all masters. Every failure (key taken on some
// or a majority of nodes, node errors, too little validity left) means "not this time".
func (l *Locker) attempt(ctx context.Context, key string) (*Lease, error) {
	name := l.cfg.Prefix + key
	token, err := newToken()
	if err != nil {
		return nil, err
	}
	acq := l.rs.NewMutex(name,
		redsync.WithExpiry(l.cfg.TTL),
		redsync.WithTries(1),
		redsync.WithGenValueFunc(func() (string, error) { return token, nil }),
		redsync.WithTimeoutFactor(float64(l.cfg.AttemptTimeout)/float64(l.cfg.TTL)),
		// No WithFailFast here: an attempt that gave up early would release while its
		// straggling SET NX may still land afterwards on a healthy master, leaving a stale
		// half-lease there for a whole TTL. Waiting for every master (or AttemptTimeout)
		// orders each SET before the release of a failed attempt.
	)
	start := l.cfg.Clock()
	// Renewals and the release use their own mutex with the same value: for them,
	// returning as soon as a majority answered is safe (a late PEXPIRE or DEL of our own
	// value is harmless) and keeps a frozen minority master off the critical path.
	held := l.rs.NewMutex(name,
		redsync.WithExpiry(l.cfg.TTL),
		redsync.WithValue(token),
		redsync.WithFailFast(true),
	)
	// Detached from ctx: the attempt is bounded by AttemptTimeout, and redsync must be able
	// to undo a partial acquisition even when the caller gave up meanwhile; otherwise
	// half-set keys would block the key for a whole TTL.
	if err := acq.LockContext(context.WithoutCancel(ctx)); err != nil {
		// redsync's own undo runs under AttemptTimeout too: when a slow master made the
		// attempt time out, its SET NX may land after that undo was dropped. Undo again
		// with the release timeout; the DEL queues behind the SET on that master.
		l.unlock(ctx, held)
		return nil, err
	}
	lease := &Lease{l: l, key: key, m: held, token: token, until: start.Add(l.cfg.TTL - driftAllowance(l.cfg.TTL))}
	if left := lease.until.Sub(l.cfg.Clock()); left < l.cfg.SafetyMargin {
		l.releaseQuietly(ctx, lease)
		return nil, fmt.Errorf("acquired with %v validity left, below the safety margin %v", left, l.cfg.SafetyMargin)
	}
	return lease, nil
}

// run runs fn under lease, renewing it, and releases it afterwards. See Do for the result.
func (l *Locker) run(ctx context.Context, lease *Lease, fn func(ctx context.Context) error) error {
	return l.runAll(ctx, []*Lease{lease}, fn)
}

// runAll runs fn under every lease of leases, renewing each, and releases them afterwards.
// fn's context is cancelled with cause ErrLeaseLost when any of them is lost. See Do (and
// DoAll) for the result.
func (l *Locker) runAll(ctx context.Context, leases []*Lease, fn func(ctx context.Context) error) error {
	fnCtx, cancelFn := context.WithCancelCause(ctx)
	defer cancelFn(nil)

	// Renewal runs until fn returns, whatever happens to ctx: the leases must keep
	// protecting fn while fn unwinds after a cancellation.
	renewCtx, stopRenewal := context.WithCancel(context.WithoutCancel(ctx))
	var renewals sync.WaitGroup
	for _, lease := range leases {
		renewals.Add(1)
		go func() {
			defer renewals.Done()
			l.keepAlive(renewCtx, lease, func() { cancelFn(ErrLeaseLost) })
		}()
	}

	fnErr := fn(fnCtx)
	stopRenewal()
	renewals.Wait()

	var lostKey string
	for _, lease := range leases {
		lost := lease.isLost()
		if lost && lostKey == "" {
			lostKey = lease.key
		}
		if err := lease.Release(ctx); err != nil && !lost {
			l.cfg.Logger.Warn("lock: release failed; the lease expires by itself", "key", lease.key, "err", err)
		}
	}
	switch {
	case fnErr == nil:
		if lostKey != "" {
			l.cfg.Logger.Warn("lock: lease was lost while fn ran; fn completed", "key", lostKey)
		}
		return nil
	case lostKey == "":
		return fnErr
	case errors.Is(fnErr, ErrLeaseLost) || (errors.Is(fnErr, context.Canceled) && ctx.Err() == nil):
		// fn only reports the cancellation Do caused.
		return fmt.Errorf("%w: %q while fn ran", ErrLeaseLost, lostKey)
	default:
		return fmt.Errorf("%w: %q while fn ran: %w", ErrLeaseLost, lostKey, fnErr)
	}
}

// keepAlive renews lease until ctx is done, calling onLost (once) when the lease is lost.
func (l *Locker) keepAlive(ctx context.Context, lease *Lease, onLost func()) {
	timer := time.NewTimer(l.nextRenewal(lease))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := lease.Extend(ctx)
		switch {
		case err == nil:
			timer.Reset(l.nextRenewal(lease))
		case errors.Is(err, ErrLeaseLost):
			onLost()
			return
		default: // ctx done: fn returned
			return
		}
	}
}

// nextRenewal returns when to renew lease next: every ExtendEvery, but earlier when the
// lease has less validity above the safety margin than that (a slow acquisition).
func (l *Locker) nextRenewal(lease *Lease) time.Duration {
	aboveMargin := lease.Until().Sub(l.cfg.Clock()) - l.cfg.SafetyMargin
	return max(0, min(l.cfg.ExtendEvery, aboveMargin/2))
}

// retryDelay returns a uniformly jittered delay in [RetryDelayMin, RetryDelayMax].
func (l *Locker) retryDelay() time.Duration {
	return backoff.Between(l.cfg.RetryDelayMin, l.cfg.RetryDelayMax)
}

// releaseTimeout bounds a release, which runs detached from the caller's context.
func (l *Locker) releaseTimeout() time.Duration {
	return min(l.cfg.TTL, time.Second)
}

// unlock deletes m's value on every master, detached from ctx and bounded by the release
// timeout. It returns when a majority answered (m fails fast); the commands to the other
// masters are not cancelled then, so a slow master still drops the key. It reports whether
// a majority dropped it.
func (l *Locker) unlock(ctx context.Context, m *redsync.Mutex) (bool, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.releaseTimeout())
	ok, err := m.UnlockContext(rctx)
	time.AfterFunc(l.releaseTimeout(), cancel) // not before the stragglers had their chance
	return ok, err
}

// newToken returns a random lease value (128 bits, base64).
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := crand.Read(b); err != nil {
		return "", fmt.Errorf("lock: random token: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// releaseQuietly releases lease, logging (not returning) a failure: the lease expires
// by itself.
func (l *Locker) releaseQuietly(ctx context.Context, lease *Lease) {
	if err := lease.Release(ctx); err != nil {
		l.cfg.Logger.Debug("lock: release failed; the lease expires by itself", "key", lease.key, "err", err)
	}
}

// waitFailed returns the error for a wait that ended before a lease was obtained: the
// caller's context error if ctx ended, else ErrNotAcquired.
func (l *Locker) waitFailed(ctx context.Context, key string, lastErr error) error {
	if err := ctx.Err(); err != nil {
		return ctxError(key, err)
	}
	if lastErr == nil {
		return notAcquired(key, true, fmt.Sprintf("%q within %v (queued behind other goroutines of this process)", key, l.cfg.WaitTimeout))
	}
	return notAcquired(key, heldElsewhere(lastErr), fmt.Sprintf("%q within %v (last attempt: %v)", key, l.cfg.WaitTimeout, lastErr))
}

func ctxError(key string, err error) error {
	return fmt.Errorf("lock: waiting for %q: %w", key, err)
}
