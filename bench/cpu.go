package bench

import (
	"context"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/cputime"
	"github.com/tally-ledger/tally/internal/redisx"
)

// cpuSample is the CPU time used so far by each side of a run: this process (the load
// generator, and the ledger it drives without --target), the servers under --target, the
// data Redis and the lock masters. A side is nil when it cannot be measured.
type cpuSample struct {
	client, server, redis, lock *time.Duration
}

// cpuPerOp is CPU time per operation between two samples, in microseconds.
type cpuPerOp struct {
	client, server, redis, lock *float64
}

// sampleCPU reads the CPU time each side of a run used so far: this process, the
// servers behind d (nil: none), the data Redis (nil: none) and the lock masters.
func sampleCPU(ctx context.Context, d *httpDriver, data redis.UniversalClient, masters []*redis.Client) cpuSample {
	s := cpuSample{client: reading(cputime.Process()), redis: reading(redisCPU(ctx, data)), lock: reading(lockCPU(ctx, masters))}
	if d != nil {
		s.server = reading(d.serverCPU(ctx))
	}
	return s
}

// reading is a CPU time read, or nil when it could not be read.
func reading(d time.Duration, ok bool) *time.Duration {
	if !ok {
		return nil
	}
	return &d
}

// usPerOp is the CPU time between two readings per operation, in microseconds; nil when a
// reading is missing, there were no operations, or the counter went back (a restart).
func usPerOp(before, after *time.Duration, ops int64) *float64 {
	if before == nil || after == nil || ops <= 0 || *after < *before {
		return nil
	}
	v := float64((*after - *before).Nanoseconds()) / 1e3 / float64(ops)
	return &v
}

// String formats the sides as "client / server / Redis / lock", in µs with one decimal,
// "-" for a side not measured.
func (c cpuPerOp) String() string {
	f := func(p *float64) string {
		if p == nil {
			return "-"
		}
		return strconv.FormatFloat(*p, 'f', 1, 64)
	}
	return f(c.client) + " / " + f(c.server) + " / " + f(c.redis) + " / " + f(c.lock)
}

// perOpCPU divides the CPU each side used between a and b by ops.
func perOpCPU(a, b cpuSample, ops int64) cpuPerOp {
	return cpuPerOp{client: usPerOp(a.client, b.client, ops), server: usPerOp(a.server, b.server, ops),
		redis: usPerOp(a.redis, b.redis, ops), lock: usPerOp(a.lock, b.lock, ops)}
}

// lockCPU returns the CPU time the lock masters used since they started, summed (see
// redisCPU); ok is false without lock masters.
func lockCPU(ctx context.Context, masters []*redis.Client) (total time.Duration, ok bool) {
	if len(masters) == 0 {
		return 0, false
	}
	for _, m := range masters {
		d, ok := redisCPU(ctx, m)
		if !ok {
			return 0, false
		}
		total += d
	}
	return total, true
}

// redisCPU returns the CPU time a Redis used since it started (INFO cpu: used_cpu_sys +
// used_cpu_user, summed over a Cluster's masters). ok is false when a server does not
// report it (the embedded Redis).
func redisCPU(ctx context.Context, rdb redis.UniversalClient) (time.Duration, bool) {
	if rdb == nil {
		return 0, false
	}
	var (
		mu    sync.Mutex
		total time.Duration
	)
	err := redisx.ForEachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "cpu").Result()
		if err != nil {
			return err
		}
		d, ok := infoCPU(info)
		if !ok {
			return errNoStats
		}
		mu.Lock()
		total += d
		mu.Unlock()
		return nil
	})
	return total, err == nil
}

// infoCPU reads used_cpu_sys and used_cpu_user (seconds) from an INFO cpu reply; found is
// false unless both are there.
func infoCPU(info string) (d time.Duration, found bool) {
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "used_cpu_sys" && name != "used_cpu_user") {
			continue
		}
		s, err := strconv.ParseFloat(val, 64)
		if err != nil || s < 0 {
			return 0, false
		}
		d += time.Duration(s * float64(time.Second))
		n++
	}
	return d, n == 2
}

// promCPU reads process_cpu_seconds_total from a Prometheus text page; found is false
// without it.
func promCPU(page []byte) (time.Duration, bool) {
	s, ok := promValue(page, "process_cpu_seconds_total")
	return time.Duration(s * float64(time.Second)), ok
}

// promValue reads the unlabelled, finite, non-negative sample name from a Prometheus text page;
// found is false without it.
func promValue(page []byte, name string) (v float64, found bool) {
	for _, line := range strings.Split(string(page), "\n") {
		n, val, ok := strings.Cut(line, " ")
		if !ok || n != name {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || !(v >= 0) || math.IsInf(v, 1) { // NaN fails v >= 0
			return 0, false
		}
		return v, true
	}
	return 0, false
}
