package redisx_test

import (
	"context"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/internal/redisx"
)

// TestPooledAndForEachMaster: a pooled client reaches the same data with its own pool
// size, and ForEachMaster visits the one standalone server or every master of a Cluster.
func TestPooledAndForEachMaster(t *testing.T) {
	ctx := context.Background()
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			require.NoError(t, rdb.Set(ctx, "k", "v", 0).Err())
			p, closeP := redisx.Pooled(rdb, 7)
			defer closeP()
			assert.Equal(t, "v", p.Get(ctx, "k").Val(), "the same server")
			assert.Equal(t, 7, redisx.PoolSize(p))
			var mu sync.Mutex
			seen := map[string]bool{}
			err := redisx.ForEachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
				mu.Lock()
				defer mu.Unlock()
				seen[c.Options().Addr] = true
				return nil
			})
			require.NoError(t, err)
			want := 1
			if b.Name == "cluster" {
				want = 3
			}
			assert.Len(t, seen, want)
		})
	}
}
