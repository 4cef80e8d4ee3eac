package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-redsync/redsync/v4"

	"github.com/tally-ledger/tally/internal/backoff"
)

// Lease is a held lease on one key, as returned by Acquire and TryAcquire. Its methods are
// safe for concurrent use. A Lease is valid until Until; the holder must renew it with
// Extend well before that and give it back with Release.
type Lease struct {
	l     *Locker
	key   string
	token string
	m     *redsync.Mutex

	extendMu sync.Mutex // serialises Extend: redsync.Mutex is not safe for concurrent extends

	mu       sync.Mutex
	until    time.Time
	lost     bool
	released bool
}

// Key returns the key the lease is held on (without Config.Prefix).
func (s *Lease) Key() string { return s.key }

// Token returns the random value that identifies this holder on the masters (redsync's
// mutex value), for reporting who owns a key. It is not a fencing token.
func (s *Lease) Token() string { return s.token }

// Until returns the end of the lease's validity as measured by Config.Clock: the start of
// the last successful acquisition or renewal, plus TTL, minus the drift allowance. Work
// must not start when less than Config.SafetyMargin remains.
func (s *Lease) Until() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.until
}

func (s *Lease) isLost() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost
}

// Extend renews the lease for another TTL and returns nil once a majority of the masters
// renewed it. Transient failures (a master down or slow) are retried with jitter while the
// lease keeps more validity than the safety margin.
//
// Extend returns an error wrapping ErrLeaseLost when the lease is gone: it was released,
// its validity (less the safety margin) ran out, or a majority of the masters no longer
// hold it for this holder (expired, restarted, or taken by another), or the Locker was
// closed. A lost lease stays lost. It returns an error wrapping ctx.Err() when ctx ended first; the lease is then not
// known to be lost and Extend may be called again.
func (s *Lease) Extend(ctx context.Context) error {
	s.extendMu.Lock()
	defer s.extendMu.Unlock()
	cfg := &s.l.cfg
	for {
		s.mu.Lock()
		until, lost, released := s.until, s.lost, s.released
		s.mu.Unlock()
		switch {
		case released:
			return fmt.Errorf("%w: %q was released", ErrLeaseLost, s.key)
		case lost:
			return fmt.Errorf("%w: %q", ErrLeaseLost, s.key)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("lock: extend %q: %w", s.key, err)
		}
		if s.l.closed() {
			return s.lose(errClosed)
		}
		start := cfg.Clock()
		left := until.Sub(start) - cfg.SafetyMargin
		if left <= 0 {
			return s.lose(fmt.Errorf("validity %v is below the safety margin %v", until.Sub(start), cfg.SafetyMargin))
		}
		// Several attempts fit in the window left; each is bounded so that frozen
		// masters cannot use it all up.
		actx, cancel := context.WithTimeout(ctx, min(left, cfg.AttemptTimeout))
		ok, err := s.m.ExtendContext(actx)
		cancel()
		if ok {
			s.mu.Lock()
			if !s.released {
				s.until = start.Add(cfg.TTL - driftAllowance(cfg.TTL))
			}
			s.mu.Unlock()
			if cfg.Hooks.Renewed != nil {
				cfg.Hooks.Renewed(s.key)
			}
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("lock: extend %q: %w", s.key, err)
		}
		var taken *redsync.ErrTaken
		if errors.As(err, &taken) || errors.Is(err, redsync.ErrExtendFailed) {
			return s.lose(err)
		}
		cfg.Logger.Debug("lock: renewal failed, retrying", "key", s.key, "err", err)
		wait := min(s.l.retryDelay(), max(0, until.Sub(cfg.Clock())-cfg.SafetyMargin))
		if err := backoff.Wait(ctx, wait); err != nil {
			return fmt.Errorf("lock: extend %q: %w", s.key, err)
		}
	}
}

// lose marks the lease lost (firing Hooks.Lost the first time) and returns ErrLeaseLost
// wrapped with the reason.
func (s *Lease) lose(reason error) error {
	s.mu.Lock()
	first := !s.lost
	s.lost = true
	s.mu.Unlock()
	if first && s.l.cfg.Hooks.Lost != nil {
		s.l.cfg.Hooks.Lost(s.key)
	}
	return fmt.Errorf("%w: %q: %v", ErrLeaseLost, s.key, reason)
}

// Release gives the lease back so that others can take the key at once. It ignores ctx's
// cancellation (a shutting-down caller still releases) and uses a short timeout of its own.
// Releasing twice is a no-op returning nil.
//
// Release returns nil once a majority of the masters dropped the key. It returns an error
// wrapping ErrLeaseLost when the lease had already expired or was lost (there was nothing
// left to release), and another error, prefixed "lock: release", when no majority
// answered; the lease then expires by itself at Until.
func (s *Lease) Release(ctx context.Context) error {
	s.mu.Lock()
	if s.released {
		s.mu.Unlock()
		return nil
	}
	s.released = true
	gone := s.lost || !s.l.cfg.Clock().Before(s.until)
	s.mu.Unlock()

	ok, err := s.l.unlock(ctx, s.m)
	if ok {
		return nil
	}
	if err == nil {
		err = errors.New("no majority of masters answered")
	}
	if gone {
		return fmt.Errorf("%w: release %q: %v", ErrLeaseLost, s.key, err)
	}
	return fmt.Errorf("lock: release %q: %w", s.key, err)
}
