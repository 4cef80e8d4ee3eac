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
