package redistest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of real redis-server masters without replicas.
type Cluster struct {
	tb    testing.TB
	Nodes []*Server
}

// MustStartCluster starts a 3-master Redis Cluster (no replicas) on free loopback ports,
// creates it with redis-cli --cluster create and waits until every node reports
// cluster_state:ok. The nodes are stopped when the test ends.
func MustStartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	cli := binary(tb, "redis-cli")
	c := &Cluster{tb: tb}
	for i := 0; i < 3; i++ {
		c.Nodes = append(c.Nodes, MustStart(tb, WithArgs(
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
		)))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for _, n := range c.Nodes {
		nc := redis.NewClient(&redis.Options{Addr: n.Addr()})
		for {
			info, err := nc.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				nc.Close()
				tb.Fatalf("redistest: cluster node %s not ok in time: %v %s", n.Addr(), err, info)
			}
			time.Sleep(20 * time.Millisecond)
		}
		nc.Close()
	}
	return c
}

// Addrs returns the addresses of the cluster's nodes.
func (c *Cluster) Addrs() []string { return Addrs(c.Nodes) }

// Client returns a new cluster client, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.tb.Cleanup(func() { cc.Close() })
	// Every node must agree on the slot map before the first command is routed.
	deadline := time.Now().Add(startTimeout)
	for {
		err := cc.ForEachShard(context.Background(), func(ctx context.Context, s *redis.Client) error {
			return s.Ping(ctx).Err()
		})
		if err == nil {
			return cc
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("redistest: cluster client not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
