// Package redisx holds the few go-redis helpers Tally's packages share: a client that
// connects like another with its own pool, and running a function on every master.
package redisx

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Pooled returns a client that connects like rdb (address or dialer, credentials, TLS, DB)
// with its own pool of size connections, and a function that closes it. A client of
// another type is returned as is, with a no-op close.
func Pooled(rdb redis.UniversalClient, size int) (redis.UniversalClient, func()) {
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		n := redis.NewClient(&redis.Options{
			Network: o.Network, Addr: o.Addr, Dialer: o.Dialer, Username: o.Username, Password: o.Password,
			CredentialsProvider: o.CredentialsProvider, DB: o.DB, TLSConfig: o.TLSConfig,
			ContextTimeoutEnabled: o.ContextTimeoutEnabled, PoolSize: size,
		})
		return n, func() { n.Close() }
	case *redis.ClusterClient:
		o := c.Options()
		n := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.Addrs, Username: o.Username, Password: o.Password, CredentialsProvider: o.CredentialsProvider,
			TLSConfig: o.TLSConfig, ContextTimeoutEnabled: o.ContextTimeoutEnabled, PoolSize: size,
		})
		return n, func() { n.Close() }
	default:
		return rdb, func() {}
	}
}

// PoolSize returns the pool size rdb was configured with (0 for another client type).
func PoolSize(rdb redis.UniversalClient) int {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().PoolSize
	case *redis.ClusterClient:
		return c.Options().PoolSize
	}
	return 0
}

// ForEachMaster runs fn on a standalone client, or on every master of a Cluster
// (concurrently, as go-redis does). Another client type is an error.
func ForEachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	}
	return fmt.Errorf("redisx: unsupported client %T", rdb)
}
