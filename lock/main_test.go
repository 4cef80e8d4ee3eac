package lock

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
)

type discardRedisLogger struct{}

func (discardRedisLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	// go-redis logs every refused dial to stderr through its process-wide logger; the
	// tests kill masters on purpose, so that noise would drown real failures.
	redis.SetLogger(discardRedisLogger{})
	os.Exit(m.Run())
}
