package redistest

import (
	"context"
	"testing"

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
