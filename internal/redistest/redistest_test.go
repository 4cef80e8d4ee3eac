package redistest

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestServerLifecycle(t *testing.T) {
	ctx := context.Background()
	s := MustStart(t)
	c := s.Client()
	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	pid := s.PID()
	require.NotZero(t, pid)

	s.Restart()
	require.NotEqual(t, pid, s.PID(), "restart starts a new process")
	n, err := c.Exists(ctx, "k").Result()
	require.NoError(t, err)
	require.Zero(t, n, "a restarted node has no data")

	s.Kill()
	require.Error(t, c.Ping(ctx).Err())
	require.Zero(t, s.PID())
}

func TestCluster(t *testing.T) {
	ctx := context.Background()
	c := MustStartCluster(t)
	cc := c.Client()
	for _, k := range []string{"a", "b", "c", "{x}1", "{x}2"} {
		require.NoError(t, cc.Set(ctx, k, "v", 0).Err())
	}
	require.NoError(t, cc.MSet(ctx, "{x}1", "1", "{x}2", "2").Err())
}

func TestCommandsProcessed(t *testing.T) {
	s := MustStart(t)
	c := s.Client()
	before := s.CommandsProcessed()
	for i := 0; i < 10; i++ {
		require.NoError(t, c.Ping(context.Background()).Err())
	}
	require.GreaterOrEqual(t, s.CommandsProcessed()-before, int64(10))
}

// TestRestartWithAOF: a server started WithAOF keeps what it acknowledged across a SIGKILL
// and Restart (same port, same directory), and a restart after Kill works too.
func TestRestartWithAOF(t *testing.T) {
	ctx := context.Background()
	s := MustStart(t, WithAOF("always"))
	c := s.Client()
	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())
	addr := s.Addr()

	s.Kill()
	require.Error(t, c.Ping(ctx).Err())
	s.Restart()
	require.Equal(t, addr, s.Addr(), "same port")
	v, err := c.Get(ctx, "k").Result()
	require.NoError(t, err, "the AOF was reloaded")
	require.Equal(t, "v", v)
	fsync, err := c.ConfigGet(ctx, "appendfsync").Result()
	require.NoError(t, err)
	require.Equal(t, "always", fsync["appendfsync"], "the restart keeps the arguments")
}

// TestWithUser: a server started WithUser refuses connections without the user's password;
// the helper's Client authenticates.
func TestWithUser(t *testing.T) {
	ctx := context.Background()
	for _, user := range []string{"tally", "default"} {
		t.Run(user, func(t *testing.T) {
			s := MustStart(t, WithUser(user, "s3cret-pass"))
			require.NoError(t, s.Client().Set(ctx, "k", "v", 0).Err())
			anon := redis.NewClient(&redis.Options{Addr: s.Addr()})
			defer anon.Close()
			require.True(t, redis.IsAuthError(anon.Get(ctx, "k").Err()), "no credentials: NOAUTH")
			wrong := redis.NewClient(&redis.Options{Addr: s.Addr(), Username: user, Password: "wrong"})
			defer wrong.Close()
			require.True(t, redis.IsAuthError(wrong.Ping(ctx).Err()), "wrong password: WRONGPASS")
			require.Greater(t, s.CommandsProcessed(), int64(0))
		})
	}
}

// TestWithTLS: a server started WithTLS speaks TLS only, with client certificates required.
func TestWithTLS(t *testing.T) {
	ctx := context.Background()
	f := MustTLSFiles(t)
	s := MustStart(t, WithTLS(f.ServerCert, f.ServerKey, f.CA, true, f.Client))
	require.NoError(t, s.Client().Set(ctx, "k", "v", 0).Err())
	plain := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer plain.Close()
	require.Error(t, plain.Ping(ctx).Err(), "no plain-text port")
	s.Restart()
	require.NoError(t, s.Client().Ping(ctx).Err(), "a restart keeps TLS")
}
