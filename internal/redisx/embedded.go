package redisx

import (
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
)

const (
	// expireTick is how often ExpireKeys advances the TTLs of an embedded Redis. A key
	// expires within about one tick of its time, either side: a pass takes the whole time
	// since the previous one off every TTL, also off a key set in between.
	expireTick = 100 * time.Millisecond
	// expireShare: the next pass waits at least expireShare times as long as the last one
	// took. miniredis sorts and visits every key on each pass, under the lock every command
	// takes (measured: 2.5ms with 10k keys, 40ms with 100k, 0.7s with 1M), so on a large
	// data set expiry keeps to about a tenth of the server's time.
	expireShare = 10
	// expireMaxWait caps that wait, which bounds how far from its time a key expires.
	expireMaxWait = time.Second
)

// ExpireKeys makes m expire keys as a redis-server does, with real time: miniredis only
// takes time off TTLs when told to (FastForward), so without this every key written with
// PX or PEXPIRE (idempotency records, operation tokens, leases) lives forever. A goroutine
// calls m.FastForward with the time elapsed since its previous call, by the monotonic
// clock, every 100ms (longer when passes are slow, see expireShare; at most 1s). A key
// expires within one such interval of its time, either side; early only for a key set
// since the last pass, by less than the interval, which the safety margin of a lease
// (TTL/4 in package lock) covers for TTLs above four intervals: 400ms at 100ms, 4s at
// the 1s cap (the lock and relay-lease defaults are 8s and 10s). FastForward takes m's
// lock, as every command does, so a pass never lands inside a command, a MULTI or a
// script.
//
// miniredis's own ClockTTL is not used: it makes that pass on every command, which with
// 100k keys costs 44ms per command instead of 20µs.
//
// ExpireKeys returns stop, which ends the goroutine and returns once it has exited. It
// is safe to call more than once; call it before or after m.Close.
func ExpireKeys(m *miniredis.Miniredis) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(expireTick)
		defer timer.Stop()
		last := time.Now()
		for {
			select {
			case <-quit:
				return
			case <-timer.C:
			}
			now := time.Now()
			// now.Sub(last) reads the monotonic clock: a step of the wall clock (NTP) neither
			// expires every key at once nor freezes the TTLs.
			m.FastForward(now.Sub(last))
			last = now
			timer.Reset(min(max(expireTick, expireShare*time.Since(now)), expireMaxWait))
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		<-done
	}
}
