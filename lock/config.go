package lock

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults applied by New (and by Validate) to zero Config fields.
const (
	DefaultPrefix        = "tally:lock:"
	DefaultTTL           = 8 * time.Second
	DefaultWaitTimeout   = 5 * time.Second
	DefaultRetryDelayMin = 500 * time.Microsecond
	DefaultRetryDelayMax = 1500 * time.Microsecond

	// MinTTL is the shortest lease Validate accepts. Redis expires keys with millisecond
	// precision and every node round trip eats into the validity, so shorter leases are
	// never useful.
	MinTTL = 10 * time.Millisecond
)

// Config configures a Locker. Zero fields take the documented defaults; negative
// durations are rejected by Validate.
type Config struct {
	// Prefix is prepended to every key to form the lease key on the masters.
	// Default "tally:lock:".
	Prefix string

	// TTL is the lease validity requested from the masters on acquisition and on every
	// renewal. Default 8s. At least MinTTL.
	TTL time.Duration

	// WaitTimeout bounds how long Do and Acquire wait for a lease (local queue plus Redis
	// attempts) when ctx has no earlier deadline. Default 5s. An attempt already under way
	// is finished (and undone) first, so the wait may overrun by up to 2×AttemptTimeout.
	WaitTimeout time.Duration

	// RetryDelayMin and RetryDelayMax bound the uniformly jittered delay between two
	// acquisition attempts against Redis. Defaults 0.5ms and 1.5ms (RetryDelayMax defaults
	// to at least RetryDelayMin): a lease is usually held for one group commit, about a
	// millisecond, so a process that found it taken by another one tries again within about
	// that long (two processes writing one account through leases did 0.3× of what one did
	// with 10–50ms; 0.5–1.5ms did 5 % more than 1–3ms, with a p99 a third lower when each
	// client stays on one process; docs/benchmarks.md). Only the first of a process's waiters for a key makes
	// attempts: at most ~1,000 a second per key and process.
	RetryDelayMin, RetryDelayMax time.Duration

	// AttemptTimeout bounds one round of requests to all masters (one acquisition attempt,
	// one renewal attempt). A master that does not answer within it counts as a "no" for
	// that round, so a frozen minority master costs at most this much per acquisition.
	// Default min(TTL/20, 100ms), as the Redlock description advises (small compared to
	// the TTL). AttemptTimeout + SafetyMargin must be below TTL minus the drift allowance.
	AttemptTimeout time.Duration

	// SafetyMargin is the least validity a lease must still have for work to start under it
	// (after acquisition) and to be considered held (while renewing). Default TTL/4. Must be
	// less than the validity an acquisition can yield (TTL minus clock drift allowance).
	SafetyMargin time.Duration

	// ExtendEvery is the renewal period while Do's fn runs. Default TTL/3. Must leave the
	// lease above SafetyMargin between two renewals: ExtendEvery + SafetyMargin must be less
	// than TTL minus the drift allowance. Do renews earlier when less than 2×ExtendEvery of
	// validity above the margin is left, so that a failed renewal can still be retried.
	ExtendEvery time.Duration

	// Hooks are optional callbacks for metrics.
	Hooks Hooks

	// Logger receives the few events the Locker swallows (a failed release, a lease lost
	// after fn already succeeded, transient renewal errors). Nil discards.
	Logger *slog.Logger

	// Clock returns the current time; it is used for lease validity arithmetic.
	// Nil means time.Now.
	Clock func() time.Time
}

// Hooks are optional callbacks the Locker calls synchronously; they must be fast and must
// not block. Any of them may be nil.
type Hooks struct {
	// Acquired is called when a lease for key was acquired, with the time spent waiting
	// (local queue plus Redis attempts).
	Acquired func(key string, wait time.Duration)
	// AcquireFailed is called when Do, TryDo, Acquire or TryAcquire gives up on key, with the
	// error it returns (wrapping ErrNotAcquired or the caller's context error).
	AcquireFailed func(key string, err error)
	// Renewed is called after every successful renewal of a lease for key.
	Renewed func(key string)
	// Lost is called once when a lease for key is found lost or too close to expiry.
	Lost func(key string)
}

// driftAllowance is subtracted from the TTL to get a lease's validity: the Redlock clock
// drift factor (1%, as redsync) plus 2ms for Redis's expiry precision.
func driftAllowance(ttl time.Duration) time.Duration {
	return ttl/100 + 2*time.Millisecond
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if c.RetryDelayMin == 0 {
		c.RetryDelayMin = DefaultRetryDelayMin
	}
	if c.RetryDelayMax == 0 {
		c.RetryDelayMax = max(DefaultRetryDelayMax, c.RetryDelayMin)
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = min(c.TTL/20, 100*time.Millisecond)
	}
	if c.SafetyMargin == 0 {
		c.SafetyMargin = c.TTL / 4
	}
	if c.ExtendEvery == 0 {
		c.ExtendEvery = c.TTL / 3
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

// Validate reports whether c, with defaults applied to its zero fields, is usable. It
// returns an error (prefixed "lock: config:") naming every offending field: negative
// durations, a TTL below MinTTL, RetryDelayMax below RetryDelayMin, a SafetyMargin or
// AttemptTimeout that leaves an acquisition no usable validity, or an ExtendEvery that
// lets the lease drop below SafetyMargin before it is renewed.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"TTL", c.TTL}, {"WaitTimeout", c.WaitTimeout},
		{"RetryDelayMin", c.RetryDelayMin}, {"RetryDelayMax", c.RetryDelayMax},
		{"AttemptTimeout", c.AttemptTimeout}, {"SafetyMargin", c.SafetyMargin}, {"ExtendEvery", c.ExtendEvery},
	} {
		if f.d < 0 {
			bad("%s must not be negative (got %v)", f.name, f.d)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("lock: config: %w", errors.Join(errs...))
	}
	if c.TTL < MinTTL {
		bad("TTL must be at least %v (got %v)", MinTTL, c.TTL)
	}
	if c.RetryDelayMax < c.RetryDelayMin {
		bad("RetryDelayMax (%v) must not be below RetryDelayMin (%v)", c.RetryDelayMax, c.RetryDelayMin)
	}
	validity := c.TTL - driftAllowance(c.TTL)
	if c.SafetyMargin >= validity {
		bad("SafetyMargin (%v) must be below the lease validity TTL-drift (%v)", c.SafetyMargin, validity)
	}
	if c.AttemptTimeout+c.SafetyMargin >= validity {
		bad("AttemptTimeout (%v) + SafetyMargin (%v) must be below the lease validity TTL-drift (%v)",
			c.AttemptTimeout, c.SafetyMargin, validity)
	}
	if c.ExtendEvery+c.SafetyMargin >= validity {
		bad("ExtendEvery (%v) + SafetyMargin (%v) must be below the lease validity TTL-drift (%v)",
			c.ExtendEvery, c.SafetyMargin, validity)
	}
	if len(errs) > 0 {
		return fmt.Errorf("lock: config: %w", errors.Join(errs...))
	}
	return nil
}
