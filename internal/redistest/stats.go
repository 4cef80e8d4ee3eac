package redistest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// CommandsProcessed returns the server's total_commands_processed (INFO stats), counting
// the INFO command it sends itself. It fails the test when the server cannot be read.
func (s *Server) CommandsProcessed() int64 {
	s.tb.Helper()
	return int64(s.InfoFloat("stats", "total_commands_processed"))
}

// CommandRate returns the commands per second the server processed during window, which
// it waits out: the measurement window itself, not a wait for a condition.
func (s *Server) CommandRate(window time.Duration) float64 {
	s.tb.Helper()
	before, start := s.CommandsProcessed(), time.Now()
	<-time.After(window)
	return float64(s.CommandsProcessed()-before) / time.Since(start).Seconds()
}

// CommandCalls returns the calls per command (lower case, e.g. "evalsha", "hset",
// "config|resetstat") the server rdb talks to has counted since its start or its last
// CONFIG RESETSTAT (INFO commandstats; commands scripts run are counted too); for a Cluster
// client, the sum over its masters. It fails the test when a server cannot be read.
func CommandCalls(tb testing.TB, rdb redis.UniversalClient) map[string]int {
	tb.Helper()
	out := map[string]int{}
	var mu sync.Mutex
	add := func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, line := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") {
				continue
			}
			calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			n, err := strconv.Atoi(calls)
			if err != nil {
				return fmt.Errorf("line %q: %w", line, err)
			}
			out[strings.TrimPrefix(name, "cmdstat_")] += n
		}
		return nil
	}
	if err := redisx.ForEachMaster(context.Background(), rdb, add); err != nil {
		tb.Fatalf("redistest: INFO commandstats: %v", err)
	}
	return out
}

// InfoFloat returns the numeric field of an INFO section of the server (for example
// "cpu", "used_cpu_user" or "memory", "used_memory"). It fails the test when the server
// cannot be read or has no such number.
func (s *Server) InfoFloat(section, field string) float64 {
	s.tb.Helper()
	c := redis.NewClient(s.options(&redis.Options{}))
	defer c.Close()
	info, err := c.Info(context.Background(), section).Result()
	if err != nil {
		s.tb.Fatalf("redistest: INFO %s of %s: %v", section, s.Addr(), err)
	}
	f, ok := InfoNumber(info, field)
	if !ok {
		s.tb.Fatalf("redistest: no number %s in INFO %s of %s", field, section, s.Addr())
	}
	return f
}

// InfoSum returns the numeric field of an INFO section summed over the servers rdb talks
// to (a Cluster client's masters); ok is false when one of them does not report it (the
// embedded Redis reports few). It fails the test when a server cannot be read.
func InfoSum(tb testing.TB, rdb redis.UniversalClient, section, field string) (sum float64, ok bool) {
	tb.Helper()
	var mu sync.Mutex
	ok = true
	err := redisx.ForEachMaster(context.Background(), rdb, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, section).Result()
		if err != nil {
			return err
		}
		v, found := InfoNumber(info, field)
		mu.Lock()
		defer mu.Unlock()
		sum += v
		ok = ok && found
		return nil
	})
	if err != nil {
		tb.Fatalf("redistest: INFO %s: %v", section, err)
	}
	return sum, ok
}

// InfoNumber returns the numeric field of an INFO reply; ok is false when the reply has no
// such field or it is not a number (the embedded Redis reports few).
func InfoNumber(info, field string) (v float64, ok bool) {
	for _, line := range strings.Split(info, "\n") {
		if s, found := strings.CutPrefix(strings.TrimSpace(line), field+":"); found {
			f, err := strconv.ParseFloat(s, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// CPUSeconds returns the CPU time the server used since it started (used_cpu_sys +
// used_cpu_user).
func (s *Server) CPUSeconds() float64 {
	s.tb.Helper()
	return s.InfoFloat("cpu", "used_cpu_sys") + s.InfoFloat("cpu", "used_cpu_user")
}
