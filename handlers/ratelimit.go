package handlers

import (
	"errors"
	"strconv"
	"sync"
	"time"
)

// RateLimit is the request rate each API key may sustain on /v1 routes, with bursts.
type RateLimit struct {
	// PerSecond is the sustained rate of requests per key; 0 turns rate limiting off.
	PerSecond int
	// Burst is how many requests a key may send at once after being idle. Default
	// PerSecond (one second's worth).
	Burst int
}

func (r RateLimit) validate() error {
	if r.PerSecond < 0 || r.Burst < 0 {
		return errors.New("handlers: rate limit and burst must not be negative")
	}
	if r.Burst > 0 && r.PerSecond == 0 {
		return errors.New("handlers: a rate-limit burst needs a rate")
	}
	return nil
}

// limiter is a token bucket per key name, kept as the generic cell rate algorithm: one
// time per name, the theoretical arrival time (tat) of the next request at the sustained
// rate. A request is allowed when tat is less than burst intervals ahead of now. Integer
// durations, no refill goroutine, and a name whose tat has passed is a full bucket, so
// such entries can be dropped at any time: memory is bounded by the names in recent use,
// which come from the keys file (or the one anonymous name).
type limiter struct {
	interval time.Duration // between requests at the sustained rate
	window   time.Duration // burst × interval: how far ahead tat may run
	now      func() time.Time

	mu        sync.Mutex
	tat       map[string]time.Time
	nextPrune int
}

func newLimiter(r RateLimit, now func() time.Time) *limiter {
	burst := r.Burst
	if burst == 0 {
		burst = r.PerSecond
	}
	interval := time.Second / time.Duration(r.PerSecond)
	return &limiter{interval: interval, window: time.Duration(burst) * interval, now: now,
		tat: map[string]time.Time{}, nextPrune: 64}
}

// allow takes a token from name's bucket. When it is empty it returns false and the
// Retry-After value: whole seconds until a token is back, at least 1.
func (l *limiter) allow(name string) (bool, string) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	tat := l.tat[name]
	if tat.Before(now) {
		tat = now
	}
	next := tat.Add(l.interval)
	if wait := next.Sub(now) - l.window; wait > 0 {
		secs := (wait + time.Second - 1) / time.Second
		return false, strconv.FormatInt(max(int64(secs), 1), 10)
	}
	l.tat[name] = next
	if len(l.tat) >= l.nextPrune {
		for n, t := range l.tat {
			if !t.After(now) {
				delete(l.tat, n)
			}
		}
		l.nextPrune = 2*len(l.tat) + 64
	}
	return true, ""
}
