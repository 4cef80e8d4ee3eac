package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// TestHelpSaysWhatIsRequired checks that the top-level usage and 'tally <command> -h' say
// that relay and verify require --redis or --redis-cluster, that serve offers an embedded
// Redis (saying it is not durable), and that bench runs on an embedded Redis or --target.
func TestHelpSaysWhatIsRequired(t *testing.T) {
	var top bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"--help"}, &top, &top))
	for _, cmd := range []string{"relay", "verify"} {
		t.Run(cmd, func(t *testing.T) {
			i := strings.Index(top.String(), "\n  "+cmd+" ")
			require.GreaterOrEqual(t, i, 0, "top-level usage lists %s:\n%s", cmd, top.String())
			entry, _, _ := strings.Cut(top.String()[i+1:], "\n  "+nextCommand(cmd)+" ")
			assert.Contains(t, entry, "requires --redis or --redis-cluster", "top-level usage of %s", cmd)

			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{cmd, "-h"}, &stdout, &stderr)
			require.ErrorIs(t, err, flag.ErrHelp)
			help := stderr.String()
			assert.Contains(t, help, "usage: tally "+cmd+" (--redis host:port | --redis-cluster host:port,...)")
			assert.Contains(t, help, "--redis or --redis-cluster is required")
			assert.Contains(t, help, "this or --redis-cluster is required", "the --redis flag's own text")
			assert.NotContains(t, strings.ToLower(help), "embedded", "%s has no embedded Redis", cmd)
		})
	}
	t.Run("bench", func(t *testing.T) {
		i := strings.Index(top.String(), "\n  bench ")
		require.GreaterOrEqual(t, i, 0, top.String())
		entry, _, _ := strings.Cut(top.String()[i+1:], "\n  verify ")
		assert.Contains(t, entry, "embedded without --redis")
		assert.Contains(t, entry, "--target")
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), []string{"bench", "-h"}, &stdout, &stderr)
		require.ErrorIs(t, err, flag.ErrHelp)
		assert.Contains(t, stderr.String(), "usage: tally bench [--redis host:port | --redis-cluster host:port,... | --target http://host:port]")
		assert.Contains(t, stderr.String(), "not\ncomparable with a real redis-server")
		assert.Contains(t, stderr.String(), "-mix string")
	})
	t.Run("serve", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), []string{"serve", "-h"}, &stdout, &stderr)
		require.ErrorIs(t, err, flag.ErrHelp)
		assert.Contains(t, stderr.String(), "usage: tally serve [--redis host:port | --redis-cluster host:port,...]")
		assert.Contains(t, stderr.String(), "embedded in-memory Redis, NOT durable")
		assert.Contains(t, stderr.String(), "-request-timeout duration")
	})
}

// nextCommand returns the command listed after cmd in the top-level usage.
func nextCommand(cmd string) string {
	order := []string{"serve", "relay", "bench", "verify", "version"}
	for i, c := range order[:len(order)-1] {
		if c == cmd {
			return order[i+1]
		}
	}
	return ""
}

// TestRedisRequired checks that relay and verify refuse to run without a Redis address,
// before writing anything to stdout (bench runs on an embedded one: TestBenchEmbedded).
func TestRedisRequired(t *testing.T) {
	for _, cmd := range []string{"relay", "verify"} {
		t.Run(cmd, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{cmd}, &stdout, &stderr)
			require.ErrorIs(t, err, errRedisRequired)
			assert.Empty(t, stdout.String())
			assert.NotContains(t, stderr.String(), "NOT DURABLE")
		})
	}
}

// TestVersion checks that 'tally --version' and 'tally version' print the same line, from
// the binary's build information.
func TestVersion(t *testing.T) {
	var a, b bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"--version"}, &a, &a))
	require.NoError(t, run(t.Context(), []string{"version"}, &b, &b))
	assert.Equal(t, a.String(), b.String())
	assert.True(t, strings.HasPrefix(a.String(), "tally "), a.String())
	assert.Contains(t, a.String(), runtime.Version(), "test binaries carry build info with the Go version")
	require.Error(t, run(t.Context(), []string{"version", "extra"}, &a, &a))

	for _, tc := range []struct {
		name string
		info *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build info", nil, false, "tally (unknown version)"},
		{"go install of a tag", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}},
			true, "tally v1.2.3 go1.26.0"},
		{"build in a dirty checkout", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.0.0-20261120100000-0123456789ab+dirty"},
			Settings: []debug.BuildSetting{
				{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
				{Key: "vcs.time", Value: "2026-11-20T10:00:00Z"}, {Key: "vcs.modified", Value: "true"},
			}},
			true, "tally v0.0.0-20261120100000-0123456789ab+dirty (revision 0123456789abcdef0123456789abcdef01234567, 2026-11-20T10:00:00Z, modified) go1.26.0"},
		{"no VCS stamp", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}},
			true, "tally (devel) go1.26.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, version(tc.info, tc.ok))
		})
	}
}

// TestServeConfigErrorsBeforeAnything runs serve with invalid configurations and checks
// that each fails before it logs the NOT DURABLE banner (so before the embedded Redis is
// started), before it connects to a Redis given with --redis, and before it listens.
func TestServeConfigErrorsBeforeAnything(t *testing.T) {
	// fake stands in for a Redis: every connection serve makes to it stays in its accept
	// queue, where pending finds it.
	fake, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { fake.Close() })
	pending := func() bool {
		require.NoError(t, fake.(*net.TCPListener).SetDeadline(time.Now()))
		c, err := fake.Accept()
		if err == nil {
			c.Close()
			return true
		}
		var ne net.Error
		require.True(t, errors.As(err, &ne) && ne.Timeout(), "accept: %v", err)
		return false
	}

	dir := t.TempDir()
	goodKeysFile, badKeysFile := filepath.Join(dir, "good.json"), filepath.Join(dir, "bad.json")
	writeKeys(t, goodKeysFile, []handlers.Key{{Name: "app", SHA256: handlers.HashToken("token"), Scopes: []handlers.Scope{"read"}}})
	require.NoError(t, os.WriteFile(badKeysFile, []byte(`[{"name":"app","sha256":"`+handlers.HashToken("t")+`","scopes":["delete"]}]`), 0o600))

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad log level", []string{"--log-level", "loud"}, "--log-level"},
		{"unknown concurrency", []string{"--concurrency", "pessimistic"}, "ledger: mode must be"},
		{"zero partitions", []string{"--partitions", "0"}, "--partitions must be positive"},
		{"too many partitions", []string{"--partitions", "20000"}, "ledger: partitions must be 1..16384"},
		{"zero max batch", []string{"--max-batch", "0"}, "--max-batch must be positive"},
		{"huge max batch", []string{"--max-batch", "5000"}, "ledger: max batch must be 1..1024"},
		{"negative snapshot cache", []string{"--snapshot-cache", "-1"}, "--snapshot-cache must be 0 (off) or positive"},
		{"short idempotency TTL", []string{"--idempotency-ttl", "100ms"}, "TTLs at least 1s"},
		{"non-loopback without keys", []string{"--addr", "0.0.0.0:0"}, "non-loopback address 0.0.0.0:0 without API keys: give --api-keys-file"},
		{"non-loopback with --insecure-admin", []string{"--addr", "0.0.0.0:0", "--insecure-admin"}, "without API keys"},
		{"profiler off loopback", []string{"--pprof", "0.0.0.0:6060"}, "--pprof must be a loopback address"},
		{"missing keys file", []string{"--api-keys-file", "/nonexistent/keys.json"}, "--api-keys-file: stat /nonexistent/keys.json: no such file"},
		{"invalid keys file", []string{"--api-keys-file", badKeysFile}, `unknown scope "delete"`},
		{"insecure admin with keys", []string{"--api-keys-file", goodKeysFile, "--insecure-admin"}, "--insecure-admin is for a loopback server without keys"},
		{"negative rate limit", []string{"--rate-limit", "-1"}, "--rate-limit and --rate-burst must not be negative"},
		{"burst without rate", []string{"--rate-burst", "5"}, "--rate-burst needs --rate-limit"},
		{"zero max body", []string{"--max-body", "0"}, "--max-body must be positive"},
		{"negative max body", []string{"--max-body", "-1"}, "--max-body must be positive"},
		{"zero request timeout", []string{"--request-timeout", "0s"}, "--request-timeout must be positive"},
		{"negative shutdown timeout", []string{"--shutdown-timeout", "-1s"}, "--shutdown-timeout must be positive"},
		{"lock TTL below the minimum", []string{"--concurrency", "lock", "--lock-ttl", "5ms"}, "lock: config"},
		{"zero lock wait", []string{"--lock-wait", "0s"}, "--lock-wait must be positive"},
		{"relay lease TTL below the minimum", []string{"--relay-lease-ttl", "5ms"}, "lock: config"},
		{"zero relay attempts", []string{"--relay-max-attempts", "0"}, "--relay-max-attempts must be positive"},
		{"zero outbox retention", []string{"--outbox-retention", "0s"}, "--outbox-retention must be positive"},
		{"negative relay linger", []string{"--relay-linger", "-1ms"}, "--relay-linger must not be negative"},
		{"webhook without secret", []string{"--webhook", "http://127.0.0.1:1/hook"}, "outbox"},
	} {
		for _, variant := range []string{"embedded", "redis"} {
			t.Run(tc.name+"/"+variant, func(t *testing.T) {
				args := append([]string{"serve", "--addr", "127.0.0.1:0"}, tc.args...)
				if variant == "redis" {
					args = append(args, "--redis", fake.Addr().String(), "--lock-redis", fake.Addr().String())
				}
				// Bounded, so that a configuration accepted by mistake fails the test instead
				// of serving until the test times out.
				ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
				defer cancel()
				var stdout, stderr syncBuffer
				err := run(ctx, args, &stdout, &stderr)
				require.Error(t, err, "stderr: %s", stderr.String())
				assert.Contains(t, err.Error(), tc.want)
				assert.Empty(t, stdout.String(), "nothing listens")
				assert.NotContains(t, stderr.String(), "NOT DURABLE")
				assert.NotContains(t, stderr.String(), "tally serving")
				assert.False(t, pending(), "serve connected to --redis or --lock-redis")
			})
		}
	}

	t.Run("both --redis and --redis-cluster", func(t *testing.T) {
		var stdout, stderr syncBuffer
		err := run(t.Context(), []string{"serve", "--addr", "127.0.0.1:0", "--redis", fake.Addr().String(), "--redis-cluster", fake.Addr().String()}, &stdout, &stderr)
		require.ErrorContains(t, err, "not both")
		assert.Empty(t, stdout.String())
		assert.False(t, pending())
	})

	t.Run("TALLY_REQUEST_TIMEOUT is read", func(t *testing.T) {
		t.Setenv("TALLY_REQUEST_TIMEOUT", "-5s")
		var stdout, stderr syncBuffer
		err := run(t.Context(), []string{"serve", "--addr", "127.0.0.1:0"}, &stdout, &stderr)
		require.ErrorContains(t, err, "--request-timeout must be positive")
		assert.NotContains(t, stderr.String(), "NOT DURABLE")
	})
}

// TestAPIWriteTimeout checks that the API server leaves time to write the answer of a
// request that ran out of time, also while it led a group commit.
func TestAPIWriteTimeout(t *testing.T) {
	for _, d := range []time.Duration{time.Second, 30 * time.Second, 5 * time.Minute} {
		assert.Greater(t, apiWriteTimeout(d, groupCommitTimeout), d+groupCommitTimeout)
	}
}
