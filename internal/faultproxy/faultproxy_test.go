package faultproxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/faultproxy"
	"github.com/tally-ledger/tally/internal/redistest"
)

// proxied starts a redis-server and a proxy in front of it, and returns them with a client
// that talks through the proxy and never retries on its own.
func proxied(t *testing.T) (*redistest.Server, *faultproxy.Proxy, *redis.Client) {
	t.Helper()
	srv := redistest.MustStart(t)
	p, err := faultproxy.New(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second})
	t.Cleanup(func() { c.Close() })
	return srv, p, c
}

// TestProxyForwardsCutsSlowsAndHeals drives a real redis-server through the proxy: commands
// pass; Cut breaks the open connection and refuses new ones (errors, not hangs); Heal
// restores service; Slow adds at least its delay to a round trip.
func TestProxyForwardsCutsSlowsAndHeals(t *testing.T) {
	srv, p, c := proxied(t)
	ctx := context.Background()

	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	require.Equal(t, "v", c.Get(ctx, "k").Val())

	p.Cut()
	start := time.Now()
	require.Error(t, c.Get(ctx, "k").Err(), "the pooled connection was closed")
	require.Error(t, c.Get(ctx, "k").Err(), "a new connection is refused")
	require.Less(t, time.Since(start), time.Second, "a cut fails fast, it does not hang")
	require.Positive(t, p.Refused())
	require.Equal(t, int64(1), p.Cuts())
	require.Equal(t, "v", srv.Client().Get(ctx, "k").Val(), "the server itself is untouched")

	p.Heal()
	require.Eventually(t, func() bool { return c.Get(ctx, "k").Val() == "v" }, 5*time.Second, 10*time.Millisecond)

	// The delay is long enough that the healed round trip's bound (one delay) leaves a
	// loaded, -race machine plenty of room.
	const delay = 400 * time.Millisecond
	p.Slow(delay)
	start = time.Now()
	require.Equal(t, "v", c.Get(ctx, "k").Val())
	require.GreaterOrEqual(t, time.Since(start), 2*delay, "request and reply each wait the delay")
	p.Heal()
	start = time.Now()
	require.Equal(t, "v", c.Get(ctx, "k").Val())
	require.Less(t, time.Since(start), delay, "healed: neither direction waits")
}

// TestProxyLosesOneReply checks that after LoseNextReply a command runs on the server while
// its client sees an error, and that only that one reply is lost.
func TestProxyLosesOneReply(t *testing.T) {
	srv, p, c := proxied(t)
	ctx := context.Background()
	require.NoError(t, c.Ping(ctx).Err())

	p.LoseNextReply()
	require.Error(t, c.Incr(ctx, "n").Err(), "the reply was lost")
	require.Equal(t, "1", srv.Client().Get(ctx, "n").Val(), "but the command ran")
	require.Equal(t, int64(1), p.Lost())
	require.Equal(t, int64(2), c.Incr(ctx, "n").Val(), "the next reply arrives")
	require.Equal(t, int64(1), p.Lost())
}
