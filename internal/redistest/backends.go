package redistest

import (
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// Backend starts one kind of Redis for a test and returns a client for it.
type Backend struct {
	Name  string
	Start func(t *testing.T) redis.UniversalClient
}

// Backends are the three Redis implementations every contract test runs against: a real
// standalone server, a real 3-master Cluster and the embedded miniredis that `tally serve`
// uses by default, which expires keys as the real ones do (redisx.ExpireKeys).
func Backends() []Backend {
	return []Backend{
		{"standalone", func(t *testing.T) redis.UniversalClient { return MustStart(t).Client() }},
		{"cluster", func(t *testing.T) redis.UniversalClient { return MustStartCluster(t).Client() }},
		{"embedded", func(t *testing.T) redis.UniversalClient {
			m := miniredis.RunT(t)
			t.Cleanup(redisx.ExpireKeys(m)) // runs before RunT's Close
			c := redis.NewClient(&redis.Options{Addr: m.Addr()})
			t.Cleanup(func() { c.Close() })
			return c
		}},
	}
}
