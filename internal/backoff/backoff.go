// Package backoff computes retry delays and waits them out: exponential growth capped at a
// maximum, with random jitter so that many clients retrying at once spread out, and a wait
// that ends early when its context is done. It is the one place Tally's packages (ledger,
// lock, outbox) take such delays from.
//
// The randomness comes from math/rand/v2's global source, which is safe for concurrent use
// and needs no seeding; nothing here is for security.
package backoff

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy is a jittered exponential backoff: the delay before retry n (n ≥ 1) starts from
// d = min(Max, Base·2^(n−1)) and is drawn uniformly from [d − Jitter·d, d]. Jitter 0 gives
// exactly d, 0.5 "equal jitter" (at least half of d), 1 "full jitter" (anything up to d).
// The delay never exceeds Max (nor Base, when Max is below it).
//
// The zero Policy yields no delay. A Policy is a value; it is safe for concurrent use.
type Policy struct {
	// Base is the delay before the first retry, before jitter. Zero or negative: no delay.
	Base time.Duration
	// Max caps the delay before jitter. A Max below Base is taken as Base.
	Max time.Duration
	// Jitter is the random share of each delay, in [0, 1]; values outside are clamped.
	Jitter float64
}

// ErrInvalidPolicy is wrapped by Policy.Validate's errors.
var ErrInvalidPolicy = errors.New("backoff: invalid policy")

// Validate returns an error wrapping ErrInvalidPolicy when Base is negative, Max is below
// Base, or Jitter is outside [0, 1]; nil otherwise. Delay tolerates such values (see
// Policy); Validate is for configurations that should be rejected instead.
func (p Policy) Validate() error {
	switch {
	case p.Base < 0:
		return fmt.Errorf("%w: Base %v < 0", ErrInvalidPolicy, p.Base)
	case p.Max < p.Base:
		return fmt.Errorf("%w: Max %v < Base %v", ErrInvalidPolicy, p.Max, p.Base)
	case !(p.Jitter >= 0 && p.Jitter <= 1): // also rejects NaN
		return fmt.Errorf("%w: Jitter %v outside [0, 1]", ErrInvalidPolicy, p.Jitter)
	}
	return nil
}

// Ceiling returns the un-jittered delay before retry n: min(Max, Base·2^(n−1)), the upper
// bound of Delay(n). An n below 1 counts as 1. It never overflows.
func (p Policy) Ceiling(n int) time.Duration {
	if p.Base <= 0 {
		return 0
	}
	limit := max(p.Max, p.Base)
	d := p.Base
	for i := 1; i < n && d < limit; i++ {
		if d > limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}

// Delay returns the jittered delay before retry n (n ≥ 1; an n below 1 counts as 1), drawn
// uniformly from [Ceiling(n)·(1 − Jitter), Ceiling(n)].
func (p Policy) Delay(n int) time.Duration {
	d := p.Ceiling(n)
	j := min(max(p.Jitter, 0), 1)
	if j != j { // NaN
		j = 0
	}
	return Between(d-time.Duration(float64(d)*j), d)
}

// Jitter returns d spread by ±frac: a delay drawn uniformly from [d − frac·d, d + frac·d],
// for periodic work that should not run in lockstep across processes (frac is clamped to
// [0, 1]). It returns 0 for d ≤ 0 and never overflows.
func Jitter(d time.Duration, frac float64) time.Duration {
	if d <= 0 {
		return 0
	}
	f := min(max(frac, 0), 1)
	if f != f { // NaN
		f = 0
	}
	spread := time.Duration(float64(d) * f)
	hi := d + spread
	if hi < d { // overflow
		hi = time.Duration(1<<63 - 1)
	}
	return Between(d-spread, hi)
}

// Between returns a delay drawn uniformly from [lo, hi], both included. It returns lo when
// hi ≤ lo, and treats a negative lo as 0.
func Between(lo, hi time.Duration) time.Duration {
	lo = max(lo, 0)
	if hi <= lo {
		return lo
	}
	span := hi - lo
	if span == time.Duration(1<<63-1) { // span+1 would overflow
		return lo + rand.N(span)
	}
	return lo + rand.N(span+1)
}

// Wait waits for d or until ctx is done, whichever comes first. It returns nil when the
// full d passed and ctx.Err() when ctx ended first (also when ctx is already done and d ≤ 0;
// a d ≤ 0 with ctx live returns nil at once). The timer is stopped on return.
func Wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
