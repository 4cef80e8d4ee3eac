package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// ceilingScript is the raw commit ceiling's unit of work: one compare-and-append of five
// steps, the bare bones of a ledger commit — read the version (HGET), compare it with the
// caller's, write the new version and balance (HSET), append to the account's stream and
// to the outbox (2 XADD). It returns the new version, or -1 when the version moved.
var ceilingScript = redis.NewScript(`
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'b', ARGV[2])
redis.call('XADD', KEYS[2], (v + 1) .. '-0', 'e', ARGV[3])
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
return v + 1`)

// ceilingResult is what measureCeiling measured: script calls per second, and the data Redis's
// CPU time per call in microseconds (nil when Redis does not report it).
type ceilingResult struct {
	opsPerSec  float64
	redisCPUUs *float64
}

// measureCeiling runs the ceiling script in closed loops from conns connections, each on
// keys of its own (one hash tag per connection, so it works on a Cluster), for d. Its keys
// live under prefix and are deleted after.
func measureCeiling(ctx context.Context, rdb redis.UniversalClient, prefix string, conns int, d time.Duration, now func() time.Time) (ceilingResult, error) {
	c, closeC := redisx.Pooled(rdb, conns)
	defer closeC()
	defer func() { _ = deletePrefix(context.WithoutCancel(ctx), rdb, prefix) }()
	if err := ceilingScript.Load(ctx, c).Err(); err != nil {
		return ceilingResult{}, fmt.Errorf("ceiling: load script: %w", err)
	}
	// Warm the pool so that dialing is not measured.
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() { _ = c.Ping(ctx).Err() })
	}
	wg.Wait()

	counts := make([]int64, conns)
	errs := make([]error, conns)
	event := `{"type":"Deposited","data":{"currency":"USD","amount":42}}`
	cpuBefore := reading(redisCPU(ctx, rdb))
	start := now()
	deadline := start.Add(d)
	for i := range conns {
		wg.Go(func() {
			tag := fmt.Sprintf("%s:{c%d}:", prefix, i)
			keys := []string{tag + "acct", tag + "events", tag + "outbox"}
			for v := int64(0); now().Before(deadline) && ctx.Err() == nil; v++ {
				got, err := ceilingScript.EvalSha(ctx, c, keys, v, v*42, event).Int64()
				if err == nil && got != v+1 {
					err = fmt.Errorf("ceiling: version %d after %d", got, v)
				}
				if err != nil {
					errs[i] = err
					return
				}
				counts[i]++
			}
		})
	}
	wg.Wait()
	elapsed := now().Sub(start)
	cpuAfter := reading(redisCPU(ctx, rdb))
	var total int64
	for i, n := range counts {
		if errs[i] != nil && ctx.Err() == nil {
			return ceilingResult{}, errs[i]
		}
		total += n
	}
	if err := ctx.Err(); err != nil {
		return ceilingResult{}, err
	}
	return ceilingResult{opsPerSec: float64(total) / elapsed.Seconds(), redisCPUUs: usPerOp(cpuBefore, cpuAfter, total)}, nil
}
