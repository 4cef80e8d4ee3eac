package redistest

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// CommandsProcessed returns the server's total_commands_processed (INFO stats), counting
// the INFO command it sends itself. It fails the test when the server cannot be read.
func (s *Server) CommandsProcessed() int64 {
	s.tb.Helper()
	c := redis.NewClient(s.options(&redis.Options{}))
	defer c.Close()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		s.tb.Fatalf("redistest: INFO stats of %s: %v", s.Addr(), err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				s.tb.Fatalf("redistest: total_commands_processed %q: %v", v, err)
			}
			return n
		}
	}
	s.tb.Fatalf("redistest: no total_commands_processed in INFO stats of %s", s.Addr())
	return 0
}

// CommandRate returns the commands per second the server processed during window, which
// it waits out: the measurement window itself, not a wait for a condition.
func (s *Server) CommandRate(window time.Duration) float64 {
	s.tb.Helper()
	before, start := s.CommandsProcessed(), time.Now()
	<-time.After(window)
	return float64(s.CommandsProcessed()-before) / time.Since(start).Seconds()
}
