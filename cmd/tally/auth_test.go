package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
)

// writeKeys writes keys as a keys file at path (replacing it at once, as an operator's
// rename would).
func writeKeys(t *testing.T, path string, keys []handlers.Key) {
	t.Helper()
	data, err := json.Marshal(keys)
	require.NoError(t, err)
	writeAtomically(t, path, data)
}

// writeAtomically replaces path with data through a rename.
func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path+".tmp", data, 0o600))
	require.NoError(t, os.Rename(path+".tmp", path))
}

// httpDo sends a request with an optional bearer token and returns the status and body.
func httpDo(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestKeysReloadOnSIGHUP runs `tally serve --api-keys-file` as a process: its keys work,
// a rewritten file takes effect on SIGHUP (the removed token gets 401, the new one works,
// a changed scope applies), a bad file on SIGHUP is logged and the keys in force stay, and
// the process keeps serving throughout. Logs name keys and count them; they never hold a
// token.
func TestKeysReloadOnSIGHUP(t *testing.T) {
	bin := buildTally(t)
	data := redistest.MustStart(t)
	path := filepath.Join(t.TempDir(), "keys.json")
	oldTok, newTok, opsTok := "old-token-0123456789abcdef", "new-token-0123456789abcdef", "ops-token-0123456789abcdef"
	rw := []handlers.Scope{handlers.ScopeRead, handlers.ScopeWrite}
	writeKeys(t, path, []handlers.Key{{Name: "app", SHA256: handlers.HashToken(oldTok), Scopes: rw}})
	p := startProc(t, bin, "--redis", data.Addr(), "--relay=false", "--api-keys-file", path, "--log-level", "info")

	code, body := httpDo(t, "POST", p.base+"/v1/accounts", oldTok, `{"id":"alice"}`)
	require.Equal(t, 201, code, body)
	code, _ = httpDo(t, "GET", p.base+"/v1/accounts/alice", newTok, "")
	require.Equal(t, 401, code)

	// Rotation: the new token is added next to the old one, then the old one removed.
	writeKeys(t, path, []handlers.Key{{Name: "app", SHA256: handlers.HashToken(oldTok), Scopes: rw},
		{Name: "app-next", SHA256: handlers.HashToken(newTok), Scopes: rw}, {Name: "ops", SHA256: handlers.HashToken(opsTok), Scopes: []handlers.Scope{handlers.ScopeRead}}})
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { c, _ := httpDo(t, "GET", p.base+"/v1/accounts/alice", newTok, ""); return c == 200 },
		20*time.Second, 20*time.Millisecond, "the new token works after SIGHUP")
	code, _ = httpDo(t, "GET", p.base+"/v1/accounts/alice", oldTok, "")
	require.Equal(t, 200, code, "both work during the rotation")
	code, _ = httpDo(t, "POST", p.base+"/v1/accounts/alice/deposits", opsTok, `{"currency":"USD","amount":1}`)
	require.Equal(t, 403, code, "a read-only key cannot write")

	writeKeys(t, path, []handlers.Key{{Name: "app-next", SHA256: handlers.HashToken(newTok), Scopes: rw},
		{Name: "ops", SHA256: handlers.HashToken(opsTok), Scopes: rw}})
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { c, _ := httpDo(t, "GET", p.base+"/v1/accounts/alice", oldTok, ""); return c == 401 },
		20*time.Second, 20*time.Millisecond, "the removed token is refused after SIGHUP")
	code, body = httpDo(t, "POST", p.base+"/v1/accounts/alice/deposits", opsTok, `{"currency":"USD","amount":1}`)
	require.Equal(t, 201, code, "the changed scope applies: %s", body)

	// A bad file: logged, and the keys in force stay.
	writeAtomically(t, path, []byte(`[{"name":"app-next","sha256":"`+handlers.HashToken(newTok)+`","scopes":["read","sudo"]}]`))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(p.logs.String(), "API keys not reloaded") },
		20*time.Second, 20*time.Millisecond, "the bad file is logged")
	assert.Contains(t, p.logs.String(), `unknown scope \"sudo\"`)
	code, _ = httpDo(t, "GET", p.base+"/v1/accounts/alice", newTok, "")
	assert.Equal(t, 200, code, "the previous keys stay in force")
	code, _ = httpDo(t, "POST", p.base+"/v1/accounts/alice/deposits", opsTok, `{"currency":"USD","amount":1}`)
	assert.Equal(t, 201, code)
	os.Remove(path)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Count(p.logs.String(), "API keys not reloaded") == 2 },
		20*time.Second, 20*time.Millisecond, "a missing file is logged too")
	code, _ = httpDo(t, "GET", p.base+"/v1/accounts/alice", newTok, "")
	assert.Equal(t, 200, code)

	logs := p.logs.String()
	assert.Contains(t, logs, "API keys reloaded")
	// stderr is a pipe: the log is JSON (--log-format auto).
	assert.Contains(t, logs, `"keys":3`)
	assert.Regexp(t, `"msg":"request",.*"route":"/v1/accounts/:id/deposits","status":201,.*"key":"ops"`, logs, "request lines name the key")
	for _, secret := range []string{oldTok, newTok, opsTok, handlers.HashToken(newTok)} {
		assert.NotContains(t, logs, secret)
	}
	p.stop(t)
}

// runFails runs tally with args (bounded in time) and returns its error; it requires that
// nothing listened.
func runFails(t *testing.T, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var stdout, stderr syncBuffer
	err := run(ctx, args, &stdout, &stderr)
	require.Error(t, err, "stderr: %s", stderr.String())
	assert.Empty(t, stdout.String(), "nothing listens")
	return err
}

// TestRedisACL: serve, relay and verify reach a data Redis and lock masters that require
// an ACL user each (passwords from TALLY_REDIS_PASSWORD and TALLY_LOCK_REDIS_PASSWORD, not
// the command line); a wrong password for either fails at start with a message that says
// so, before anything listens.
func TestRedisACL(t *testing.T) {
	data := redistest.MustStart(t, redistest.WithUser("tally", "data-pass-0123"))
	master := redistest.MustStart(t, redistest.WithUser("locker", "lock-pass-0123"))
	t.Setenv("TALLY_REDIS_PASSWORD", "data-pass-0123")
	t.Setenv("TALLY_LOCK_REDIS_PASSWORD", "lock-pass-0123")
	conn := []string{"--redis", data.Addr(), "--redis-user", "tally", "--lock-redis", master.Addr(), "--lock-redis-user", "locker"}

	before := master.CommandsProcessed()
	base, stop := startServe(t, append([]string{"--concurrency", "lock", "--partitions", "4"}, conn...)...)
	code, body := post(t, base+"/v1/accounts", `{"id":"alice"}`)
	require.Equal(t, 201, code, body)
	code, body = post(t, base+"/v1/accounts/alice/deposits", `{"currency":"USD","amount":10}`)
	require.Equal(t, 201, code, body)
	require.NoError(t, stop())
	assert.GreaterOrEqual(t, master.CommandsProcessed()-before, int64(5), "the leases were taken and released on the lock master")

	var out syncBuffer
	require.NoError(t, run(t.Context(), append([]string{"verify", "--partitions", "4"}, conn[:4]...), &out, &out), out.String())
	assert.Contains(t, out.String(), "OK: no invariant violated")

	t.Run("wrong data password", func(t *testing.T) {
		t.Setenv("TALLY_REDIS_PASSWORD", "wrong")
		for _, cmd := range [][]string{{"serve", "--addr", "127.0.0.1:0"}, {"relay"}, {"verify"}} {
			args := conn
			if cmd[0] == "verify" {
				args = conn[:4] // verify has no lock masters
			}
			err := runFails(t, append(cmd, args...)...)
			assert.ErrorContains(t, err, "connect to redis: authentication refused (check --redis-user and TALLY_REDIS_PASSWORD)", cmd[0])
			assert.ErrorContains(t, err, "WRONGPASS", cmd[0])
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		t.Setenv("TALLY_REDIS_PASSWORD", "")
		err := runFails(t, "verify", "--redis", data.Addr())
		assert.ErrorContains(t, err, "authentication refused")
	})
	t.Run("wrong lock password", func(t *testing.T) {
		t.Setenv("TALLY_LOCK_REDIS_PASSWORD", "wrong")
		for _, cmd := range [][]string{{"serve", "--addr", "127.0.0.1:0", "--concurrency", "lock"}, {"relay", "--partitions", "4"}} {
			err := runFails(t, append(cmd, conn...)...)
			assert.ErrorContains(t, err, "connect to lock master "+master.Addr()+": authentication refused (check --lock-redis-user and TALLY_LOCK_REDIS_PASSWORD)", cmd[0])
		}
	})
	t.Run("password on the command line is warned about", func(t *testing.T) {
		t.Setenv("TALLY_REDIS_PASSWORD", "")
		var stdout, stderr syncBuffer
		require.NoError(t, run(t.Context(), []string{"verify", "--redis", data.Addr(), "--redis-user", "tally", "--redis-password", "data-pass-0123", "--partitions", "4"}, &stdout, &stderr))
		assert.Contains(t, stderr.String(), "--redis-password on the command line is visible to every local user")
		assert.NotContains(t, stderr.String(), "data-pass-0123")
	})
}

// TestRedisTLS: the Debian redis-server is built with TLS, so serve and verify are tested
// against a TLS-only data Redis and lock master that require client certificates, with a
// CA generated by the test: they work with the right CA and certificate, and fail at start
// with a clear message with another CA, without a client certificate, or without TLS.
func TestRedisTLS(t *testing.T) {
	f := redistest.MustTLSFiles(t)
	data := redistest.MustStart(t, redistest.WithTLS(f.ServerCert, f.ServerKey, f.CA, true, f.Client))
	master := redistest.MustStart(t, redistest.WithTLS(f.ServerCert, f.ServerKey, f.CA, true, f.Client))
	dataTLS := []string{"--redis", data.Addr(), "--redis-tls", "--redis-tls-ca", f.CA, "--redis-tls-cert", f.ClientCert, "--redis-tls-key", f.ClientKey}
	lockTLS := []string{"--lock-redis", master.Addr(), "--lock-redis-tls", "--lock-redis-tls-ca", f.CA, "--lock-redis-tls-cert", f.ClientCert,
		"--lock-redis-tls-key", f.ClientKey, "--lock-redis-tls-server-name", "redis.test"}

	base, stop := startServe(t, append(append([]string{"--concurrency", "lock", "--partitions", "4"}, dataTLS...), lockTLS...)...)
	code, body := post(t, base+"/v1/accounts", `{"id":"alice"}`)
	require.Equal(t, 201, code, body)
	code, body = post(t, base+"/v1/accounts/alice/deposits", `{"currency":"USD","amount":10}`)
	require.Equal(t, 201, code, body)
	require.NoError(t, stop())
	var out syncBuffer
	require.NoError(t, run(t.Context(), append([]string{"verify", "--partitions", "4"}, dataTLS...), &out, &out), out.String())

	withCA := func(args []string, flag, ca string) []string {
		out := slices.Clone(args)
		out[slices.Index(out, flag)+1] = ca
		return out
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"another CA", withCA(dataTLS, "--redis-tls-ca", f.OtherCA), "connect to redis: TLS handshake failed"},
		{"no client certificate", dataTLS[:5], "connect to redis: TLS handshake failed"},
		{"wrong server name", append(slices.Clone(dataTLS), "--redis-tls-server-name", "other.test"), "connect to redis: TLS handshake failed"},
		{"plain text to a TLS port", []string{"--redis", data.Addr()}, "connect to redis"},
		{"lock master with another CA", append(slices.Clone(dataTLS), withCA(lockTLS, "--lock-redis-tls-ca", f.OtherCA)...), "connect to lock master " + master.Addr() + ": TLS handshake failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runFails(t, append([]string{"serve", "--addr", "127.0.0.1:0", "--concurrency", "lock"}, tc.args...)...)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

// TestRedisConnFlagErrors: connection settings that cannot apply are refused before
// anything connects.
func TestRedisConnFlagErrors(t *testing.T) {
	f := redistest.MustTLSFiles(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"credentials for the embedded Redis", []string{"serve", "--addr", "127.0.0.1:0", "--redis-user", "x"}, "need --redis or --redis-cluster"},
		{"lock credentials without lock masters", []string{"serve", "--addr", "127.0.0.1:0", "--lock-redis-user", "x"}, "need --lock-redis"},
		{"TLS file without TLS", []string{"verify", "--redis", "127.0.0.1:1", "--redis-tls-ca", f.CA}, "--redis-tls*: TLS settings (CA, certificate, key, server name) need TLS turned on"},
		{"certificate without key", []string{"verify", "--redis", "127.0.0.1:1", "--redis-tls", "--redis-tls-cert", f.ClientCert}, "needs both its certificate and its key"},
		{"unreadable CA", []string{"relay", "--redis", "127.0.0.1:1", "--redis-tls", "--redis-tls-ca", "/nonexistent.pem"}, "TLS CA: open /nonexistent.pem"},
		{"CA file without PEM", []string{"serve", "--addr", "127.0.0.1:0", "--redis", "127.0.0.1:1", "--redis-tls", "--redis-tls-ca", f.ClientKey}, "no PEM certificate"},
		{"lock TLS file without TLS", []string{"serve", "--addr", "127.0.0.1:0", "--lock-redis", "127.0.0.1:1", "--lock-redis-tls-ca", f.CA}, "--lock-redis-tls*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.ErrorContains(t, runFails(t, tc.args...), tc.want)
		})
	}
}

// TestServeRateLimitAndKeysFlags: serve's --rate-limit and --rate-burst reach the API
// (the burst, then 429 with Retry-After), and --api-keys-file lifts the refusal of a
// non-loopback address.
func TestServeRateLimitAndKeysFlags(t *testing.T) {
	base, _ := startServe(t, "--rate-limit", "1", "--rate-burst", "2", "--log-level", "warn")
	for range 2 {
		code, body := httpDo(t, "GET", base+"/v1/accounts/nobody", "", "")
		require.Equal(t, 404, code, body)
	}
	req, err := http.NewRequest("GET", base+"/v1/accounts/nobody", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 429, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	code, _ := httpDo(t, "GET", base+"/healthz", "", "")
	assert.Equal(t, 200, code, "probes are not limited")

	path := filepath.Join(t.TempDir(), "keys.json")
	writeKeys(t, path, []handlers.Key{{Name: "app", SHA256: handlers.HashToken("token"), Scopes: []handlers.Scope{handlers.ScopeRead}}})
	f := serveFlags{addr: "0.0.0.0:8080", keysFile: path, partitions: 1, maxBatch: 1, maxQueue: 1, stuckAfter: 1, maxBody: 1,
		idemTTL: 1, reqTimeout: 1, shutdown: 1, lock: lockFlags{ttl: 1, wait: 1}, relay: relayFlags{leaseTTL: 1, maxAttempts: 1, retention: 1}}
	require.NoError(t, f.validate(), "a non-loopback address with keys")
	f.keysFile = ""
	require.ErrorContains(t, f.validate(), "without API keys")
}
