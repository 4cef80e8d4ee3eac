package backoff_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/backoff"
)

// draws is how many random delays each range check takes.
const draws = 2000

func TestPolicyCeiling(t *testing.T) {
	const maxDur = time.Duration(math.MaxInt64)
	tests := []struct {
		name string
		p    backoff.Policy
		n    int
		want time.Duration
	}{
		{"first retry is Base", backoff.Policy{Base: 100 * time.Millisecond, Max: 10 * time.Second}, 1, 100 * time.Millisecond},
		{"doubles", backoff.Policy{Base: 100 * time.Millisecond, Max: 10 * time.Second}, 4, 800 * time.Millisecond},
		{"capped at Max", backoff.Policy{Base: 100 * time.Millisecond, Max: 10 * time.Second}, 8, 10 * time.Second},
		{"far beyond the cap", backoff.Policy{Base: 100 * time.Millisecond, Max: 10 * time.Second}, 1_000_000, 10 * time.Second},
		{"n below 1 counts as 1", backoff.Policy{Base: time.Millisecond, Max: time.Second}, -3, time.Millisecond},
		{"Max below Base is Base", backoff.Policy{Base: time.Second, Max: time.Millisecond}, 5, time.Second},
		{"zero Max is Base", backoff.Policy{Base: time.Second}, 5, time.Second},
		{"zero policy", backoff.Policy{}, 7, 0},
		{"negative Base", backoff.Policy{Base: -time.Second, Max: time.Second}, 3, 0},
		{"no overflow near MaxInt64", backoff.Policy{Base: maxDur / 3, Max: maxDur}, 64, maxDur},
		{"no overflow of the doubling", backoff.Policy{Base: time.Nanosecond, Max: maxDur}, 200, maxDur},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.p.Ceiling(tt.n))
		})
	}
}

func TestPolicyDelayRange(t *testing.T) {
	tests := []struct {
		name   string
		p      backoff.Policy
		n      int
		lo, hi time.Duration
	}{
		{"no jitter is exact", backoff.Policy{Base: 10 * time.Millisecond, Max: time.Second}, 3, 40 * time.Millisecond, 40 * time.Millisecond},
		{"equal jitter", backoff.Policy{Base: 10 * time.Millisecond, Max: time.Second, Jitter: 0.5}, 3, 20 * time.Millisecond, 40 * time.Millisecond},
		{"full jitter", backoff.Policy{Base: 10 * time.Millisecond, Max: time.Second, Jitter: 1}, 2, 0, 20 * time.Millisecond},
		{"20% jitter", backoff.Policy{Base: 100 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.2}, 1, 80 * time.Millisecond, 100 * time.Millisecond},
		{"capped and jittered", backoff.Policy{Base: time.Millisecond, Max: 50 * time.Millisecond, Jitter: 0.5}, 30, 25 * time.Millisecond, 50 * time.Millisecond},
		{"jitter above 1 is 1", backoff.Policy{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond, Jitter: 7}, 1, 0, 10 * time.Millisecond},
		{"negative jitter is 0", backoff.Policy{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond, Jitter: -1}, 1, 10 * time.Millisecond, 10 * time.Millisecond},
		{"NaN jitter is 0", backoff.Policy{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond, Jitter: math.NaN()}, 1, 10 * time.Millisecond, 10 * time.Millisecond},
		{"zero policy", backoff.Policy{Jitter: 0.5}, 4, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireRange(t, func() time.Duration { return tt.p.Delay(tt.n) }, tt.lo, tt.hi)
		})
	}
}

func TestJitter(t *testing.T) {
	tests := []struct {
		name   string
		d      time.Duration
		frac   float64
		lo, hi time.Duration
	}{
		{"±20%", time.Second, 0.2, 800 * time.Millisecond, 1200 * time.Millisecond},
		{"none", time.Second, 0, time.Second, time.Second},
		{"frac above 1 is 1", time.Second, 3, 0, 2 * time.Second},
		{"negative frac is 0", time.Second, -0.5, time.Second, time.Second},
		{"zero d", 0, 0.2, 0, 0},
		{"negative d", -time.Second, 0.2, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireRange(t, func() time.Duration { return backoff.Jitter(tt.d, tt.frac) }, tt.lo, tt.hi)
		})
	}
	t.Run("no overflow near MaxInt64", func(t *testing.T) {
		d := time.Duration(math.MaxInt64 - 10)
		for range draws {
			require.GreaterOrEqual(t, backoff.Jitter(d, 0.5), d/2)
		}
	})
}

func TestBetween(t *testing.T) {
	tests := []struct {
		name         string
		lo, hi       time.Duration
		wantLo, want time.Duration
	}{
		{"uniform range", 10 * time.Millisecond, 50 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond},
		{"equal bounds", 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{"hi below lo is lo", 9 * time.Millisecond, time.Millisecond, 9 * time.Millisecond, 9 * time.Millisecond},
		{"negative lo is 0", -time.Second, 3, 0, 3},
		{"both inclusive, tiny span", 0, 1, 0, 1},
		{"whole int64 range", 0, time.Duration(math.MaxInt64), 0, time.Duration(math.MaxInt64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireRange(t, func() time.Duration { return backoff.Between(tt.lo, tt.hi) }, tt.wantLo, tt.want)
		})
	}
}

// requireRange draws many delays and checks that each lies in [lo, hi] and that, when the
// range is wide enough to tell, they reach both the lowest and the highest tenth of it
// (the jitter really spreads).
func requireRange(t *testing.T, draw func() time.Duration, lo, hi time.Duration) {
	t.Helper()
	minSeen, maxSeen := time.Duration(math.MaxInt64), time.Duration(math.MinInt64)
	for range draws {
		d := draw()
		require.GreaterOrEqual(t, d, lo)
		require.LessOrEqual(t, d, hi)
		minSeen, maxSeen = min(minSeen, d), max(maxSeen, d)
	}
	if tenth := (hi - lo) / 10; tenth > 0 {
		require.LessOrEqual(t, minSeen, lo+tenth, "draws reach the low end of [%v, %v]", lo, hi)
		require.GreaterOrEqual(t, maxSeen, hi-tenth, "draws reach the high end of [%v, %v]", lo, hi)
	}
	if hi-lo == 1 {
		require.NotEqual(t, minSeen, maxSeen, "both bounds are drawn")
	}
}

func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		name  string
		p     backoff.Policy
		valid bool
	}{
		{"typical", backoff.Policy{Base: time.Millisecond, Max: 50 * time.Millisecond, Jitter: 0.5}, true},
		{"zero", backoff.Policy{}, true},
		{"Base equals Max", backoff.Policy{Base: time.Second, Max: time.Second, Jitter: 1}, true},
		{"negative Base", backoff.Policy{Base: -1, Max: time.Second}, false},
		{"Max below Base", backoff.Policy{Base: time.Second, Max: time.Millisecond}, false},
		{"Jitter above 1", backoff.Policy{Base: 1, Max: 2, Jitter: 1.5}, false},
		{"negative Jitter", backoff.Policy{Base: 1, Max: 2, Jitter: -0.1}, false},
		{"NaN Jitter", backoff.Policy{Base: 1, Max: 2, Jitter: math.NaN()}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.valid {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, backoff.ErrInvalidPolicy)
		})
	}
}

func TestWait(t *testing.T) {
	t.Run("full wait returns nil", func(t *testing.T) {
		start := time.Now()
		require.NoError(t, backoff.Wait(context.Background(), 2*time.Millisecond))
		require.GreaterOrEqual(t, time.Since(start), 2*time.Millisecond)
	})
	t.Run("non-positive duration returns at once", func(t *testing.T) {
		require.NoError(t, backoff.Wait(context.Background(), 0))
		require.NoError(t, backoff.Wait(context.Background(), -time.Hour))
	})
	t.Run("done context returns its error", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, backoff.Wait(ctx, time.Hour), context.Canceled)
		require.ErrorIs(t, backoff.Wait(ctx, 0), context.Canceled)
	})
	t.Run("cancel during the wait ends it", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- backoff.Wait(ctx, time.Hour) }()
		cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(10 * time.Second):
			t.Fatal("Wait did not return after cancel")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		require.ErrorIs(t, backoff.Wait(ctx, time.Hour), context.DeadlineExceeded)
	})
}
