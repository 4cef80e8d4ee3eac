package lock

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// mustClients returns one go-redis client per server (as one process would hold), built
// with MasterOptions and closed when the test ends.
func mustClients(tb testing.TB, servers []*redistest.Server) []redis.UniversalClient {
	tb.Helper()
	out := make([]redis.UniversalClient, len(servers))
	for i, s := range servers {
		c := redis.NewClient(MasterOptions(s.Addr()))
		tb.Cleanup(func() { _ = c.Close() })
		out[i] = c
	}
	return out
}

// mustLocker returns a Locker over fresh clients to servers, logging to tb. The Locker is
// closed when the test ends, before its clients.
func mustLocker(tb testing.TB, servers []*redistest.Server, cfg Config) *Locker {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(tb)
	}
	l, err := New(mustClients(tb, servers), cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, l.Close()) })
	return l
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// hookRecorder counts hook calls.
type hookRecorder struct {
	acquired, acquireFailed, renewed, lost atomic.Int64

	lostOnce sync.Once
	lostCh   chan struct{} // closed at the first Lost
}

func newHookRecorder() *hookRecorder { return &hookRecorder{lostCh: make(chan struct{})} }

func (h *hookRecorder) hooks() Hooks {
	return Hooks{
		Acquired:      func(string, time.Duration) { h.acquired.Add(1) },
		AcquireFailed: func(string, error) { h.acquireFailed.Add(1) },
		Renewed:       func(string) { h.renewed.Add(1) },
		Lost: func(string) {
			h.lost.Add(1)
			h.lostOnce.Do(func() { close(h.lostCh) })
		},
	}
}

// doAsync runs l.Do in a goroutine and returns the channel its result arrives on.
func doAsync(ctx context.Context, l *Locker, key string, fn func(context.Context) error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- l.Do(ctx, key, fn) }()
	return ch
}

// mustReceive waits up to d for a value on ch.
func mustReceive[T any](tb testing.TB, ch <-chan T, d time.Duration, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		tb.Fatalf("timed out after %v waiting for %s", d, what)
		var zero T
		return zero
	}
}

// resetCommandStats zeroes INFO commandstats on every server.
func resetCommandStats(tb testing.TB, servers []*redistest.Server) {
	tb.Helper()
	for _, s := range servers {
		require.NoError(tb, s.Client().ConfigResetStat(context.Background()).Err())
	}
}

// commandCalls returns the number of calls of cmd (e.g. "set") summed over servers, from
// INFO commandstats.
func commandCalls(tb testing.TB, servers []*redistest.Server, cmd string) int {
	tb.Helper()
	total := 0
	for _, s := range servers {
		total += redistest.CommandCalls(tb, s.Client())[cmd]
	}
	return total
}
