package redisx_test

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/internal/redisx"
)

// TestKeysExpire: on every backend, the embedded one included (ExpireKeys), a key set
// with PX 300ms disappears, a TTL counts down with real time (not faster) and a key
// without a TTL stays. The real servers show the test expects what Redis does.
func TestKeysExpire(t *testing.T) {
	ctx := context.Background()
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			start := time.Now()
			require.NoError(t, rdb.Set(ctx, "short", "v", 300*time.Millisecond).Err())
			require.NoError(t, rdb.Set(ctx, "long", "v", time.Minute).Err())
			require.NoError(t, rdb.Set(ctx, "forever", "v", 0).Err())
			require.Eventually(t, func() bool { return rdb.Exists(ctx, "short").Val() == 0 },
				10*time.Second, 10*time.Millisecond, "a key set with PX 300ms expires")
			left, err := rdb.PTTL(ctx, "long").Result()
			require.NoError(t, err)
			elapsed := time.Since(start)
			assert.Less(t, left, time.Minute, "the TTL counts down")
			// A key expires within one pass interval (at most 1s) of its time, either side.
			assert.Greater(t, left, time.Minute-elapsed-time.Second, "the TTL counts down with real time, not faster")
			ttl, err := rdb.PTTL(ctx, "forever").Result()
			require.NoError(t, err)
			assert.Equal(t, time.Duration(-1), ttl, "no TTL")
			assert.Equal(t, "v", rdb.Get(ctx, "forever").Val(), "a key without a TTL stays")
		})
	}
}

// TestExpireKeysStops: stop ends ExpireKeys's goroutine (no leak when a test or serve
// ends), and a second stop returns too.
func TestExpireKeysStops(t *testing.T) {
	running := func() bool {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		return bytes.Contains(buf[:n], []byte("redisx.ExpireKeys.func1("))
	}
	// An earlier test's stopped goroutine may still be on its way out.
	require.Eventually(t, func() bool { return !running() }, 5*time.Second, 10*time.Millisecond, "no ExpireKeys goroutine before the test")
	m := miniredis.NewMiniRedis()
	stop := redisx.ExpireKeys(m)
	require.True(t, running(), "ExpireKeys starts its goroutine")
	stop()
	require.Eventually(t, func() bool { return !running() }, 5*time.Second, 10*time.Millisecond, "stop ends the goroutine")
	stop()
}
