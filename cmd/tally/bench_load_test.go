package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// benchJSON is the --json file's schema as the issue specifies it.
type benchJSON struct {
	Ceiling *float64 `json:"ceiling_ops_per_sec"`
	Runs    []struct {
		Mode        string   `json:"mode"`
		GroupCommit bool     `json:"group_commit"`
		Accounts    int      `json:"accounts"`
		Workers     int      `json:"workers"`
		OpsPerSec   float64  `json:"ops_per_sec"`
		P50Ms       float64  `json:"p50_ms"`
		P99Ms       float64  `json:"p99_ms"`
		Errors      int64    `json:"errors"`
		Conflicts   *int64   `json:"conflicts"`
		Retries     *int64   `json:"retries"`
		ClientCPUUs *float64 `json:"client_cpu_us_per_op"`
		ServerCPUUs *float64 `json:"server_cpu_us_per_op"`
		RedisCPUUs  *float64 `json:"redis_cpu_us_per_op"`
		LockCPUUs   *float64 `json:"lock_cpu_us_per_op"`
		LockCmdsOp  *float64 `json:"lock_cmds_per_op"`
		ServerRSS   *float64 `json:"server_rss_max_mb"`
		Correct     bool     `json:"correct"`
		Check       string   `json:"check"`
		Problems    []string `json:"problems"`
	} `json:"runs"`
}

func readBenchJSON(t *testing.T, path string) benchJSON {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var doc benchJSON
	require.NoError(t, json.Unmarshal(b, &doc), string(b))
	return doc
}

// proxyServe starts a reverse proxy in front of the serve at base until the test ends and
// returns its URL. Every request goes to intercept first, which answers it itself (and
// returns true) or lets it through.
func proxyServe(t *testing.T, base string, intercept func(w http.ResponseWriter, r *http.Request) bool) string {
	t.Helper()
	target, err := url.Parse(base)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !intercept(w, r) {
			proxy.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// answerCreated answers r 201 with the JSON body without passing it on: fast and wrong.
func answerCreated(w http.ResponseWriter, r *http.Request, body string) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, body)
}

// TestBenchEmbedded runs `tally bench` with no Redis at all: it uses the embedded one,
// sweeps both modes, and writes the JSON, CSV and SVG files.
func TestBenchEmbedded(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--duration", "300ms", "--workers", "8", "--accounts", "1,10",
		"--modes", "lock,optimistic", "--group-commit", "true", "--mix", "deposit=60,withdrawal=10,transfer=20,hold=10",
		"--ceiling-duration", "200ms", "--json", filepath.Join(dir, "out.json"), "--csv", filepath.Join(dir, "out.csv"),
		"--svg", filepath.Join(dir, "out.svg")}, &out, &errOut)
	t.Log(errOut.String())
	require.NoError(t, err, out.String())
	assert.Contains(t, out.String(), "Redis: embedded")
	assert.Empty(t, errOut.String(), "no progress line without a terminal, no NOT DURABLE warning")

	doc := readBenchJSON(t, filepath.Join(dir, "out.json"))
	require.NotNil(t, doc.Ceiling)
	assert.Positive(t, *doc.Ceiling)
	require.Len(t, doc.Runs, 4)
	for _, r := range doc.Runs {
		assert.True(t, r.Correct, "%s %d: %v", r.Mode, r.Accounts, r.Problems)
		assert.Positive(t, r.OpsPerSec)
		assert.Equal(t, 8, r.Workers)
	}
	rows := benchTable(t, out.String(), "| mode |")
	require.Len(t, rows, 4)
	csvData, err := os.ReadFile(filepath.Join(dir, "out.csv"))
	require.NoError(t, err)
	assert.Len(t, strings.Split(strings.TrimSpace(string(csvData)), "\n"), 5)
	svg, err := os.ReadFile(filepath.Join(dir, "out.svg"))
	require.NoError(t, err)
	assert.Contains(t, string(svg), "<svg")
}

// TestBenchTarget loads a real serve over HTTP with every kind of operation and checks
// that the run is correct: over HTTP (conservation, replayed events) and with tally verify
// on the server's Redis.
func TestBenchTarget(t *testing.T) {
	data := redistest.MustStart(t)
	base, _ := startServe(t, "--redis", data.Addr(), "--log-level", "warn")
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--target", base, "--redis", data.Addr(), "--duration", "500ms",
		"--workers", "8", "--accounts", "1,20", "--mix", "deposit=50,withdrawal=20,transfer=20,hold=10",
		"--ceiling-duration", "200ms", "--json", filepath.Join(dir, "out.json")}, &out, &errOut)
	t.Log(errOut.String())
	require.NoError(t, err, out.String())
	doc := readBenchJSON(t, filepath.Join(dir, "out.json"))
	require.NotNil(t, doc.Ceiling, "the ceiling of the server's Redis")
	require.Len(t, doc.Runs, 2)
	for _, r := range doc.Runs {
		assert.True(t, r.Correct, "%d accounts: %v", r.Accounts, r.Problems)
		assert.Equal(t, "optimistic", r.Mode, "the label's default")
		assert.True(t, r.GroupCommit)
		assert.Positive(t, r.OpsPerSec)
		assert.Zero(t, r.Errors)
		assert.Contains(t, r.Check, "replay = snapshot")
		assert.Contains(t, r.Check, "verify: ")
		for side, v := range map[string]*float64{"client": r.ClientCPUUs, "server (/metrics)": r.ServerCPUUs, "Redis": r.RedisCPUUs} {
			if assert.NotNil(t, v, "%s CPU per operation", side) {
				assert.Positive(t, *v, "%s CPU per operation", side)
			}
		}
		if assert.NotNil(t, r.ServerRSS, "the server's resident set, from /metrics") {
			assert.Greater(t, *r.ServerRSS, 5.0, "MiB: a Go server's RSS, not bytes or GiB")
			assert.Less(t, *r.ServerRSS, 1024.0, "MiB: a Go server's RSS, not bytes or GiB")
		}
	}
	assert.Contains(t, out.String(), "over HTTP (16 partitions);", "the server's partitions")
	assert.NotContains(t, out.String(), "max batch", "the library's, not the server's")
	rows := benchTable(t, out.String(), "| mode |")
	require.Len(t, rows, 2)
	assert.NotEqual(t, "-", rows[1]["server RSS MB"])
	cpu := strings.Split(rows[1]["CPU µs/op client / server / Redis / lock"], " / ")
	require.Len(t, cpu, 4)
	assert.NotContains(t, cpu[:3], "-", "client, server and Redis measured")
	assert.Equal(t, "-", cpu[3], "no lock masters")
	assert.NotEqual(t, "-", rows[1]["conflicts"], "the server's counters, from /metrics")
}

// TestBenchTargetReadsTheServer: a --target run is labelled with the server's mode and
// group commit and uses its partition count, as the server's /metrics says, and a flag
// that contradicts the server is refused before any load. The partition count matters
// beyond the label: the end-of-run check opens the server's ledger with it. The server's
// lock master, given, is measured like the data Redis.
func TestBenchTargetReadsTheServer(t *testing.T) {
	data, master := redistest.MustStart(t), redistest.MustStart(t)
	base, _ := startServe(t, "--redis", data.Addr(), "--lock-redis", master.Addr(), "--concurrency", "lock",
		"--group-commit=false", "--partitions", "8", "--log-level", "warn")
	bench := func(extra ...string) (benchJSON, error) {
		dir := t.TempDir()
		var out, errOut bytes.Buffer
		err := run(t.Context(), append([]string{"bench", "--target", base, "--redis", data.Addr(), "--lock-redis", master.Addr(), "--duration", "300ms",
			"--workers", "4", "--accounts", "10", "--ceiling-duration", "0", "--json", filepath.Join(dir, "out.json")}, extra...), &out, &errOut)
		t.Log(errOut.String())
		if err != nil {
			return benchJSON{}, err
		}
		return readBenchJSON(t, filepath.Join(dir, "out.json")), nil
	}

	doc, err := bench()
	require.NoError(t, err)
	require.Len(t, doc.Runs, 1)
	assert.Equal(t, "lock", doc.Runs[0].Mode)
	assert.False(t, doc.Runs[0].GroupCommit)
	assert.True(t, doc.Runs[0].Correct, "%v", doc.Runs[0].Problems)
	assert.Contains(t, doc.Runs[0].Check, "verify: ")
	// The server's lock master, given with --lock-redis, is measured.
	if assert.NotNil(t, doc.Runs[0].LockCmdsOp, "the lock master's commands") {
		assert.Positive(t, *doc.Runs[0].LockCmdsOp)
	}
	if assert.NotNil(t, doc.Runs[0].LockCPUUs, "the lock master's CPU") {
		assert.Positive(t, *doc.Runs[0].LockCPUUs)
	}

	doc, err = bench("--modes", "lock", "--group-commit", "false", "--partitions", "8")
	require.NoError(t, err, "flags that agree with the server")
	assert.Equal(t, "lock", doc.Runs[0].Mode)

	for _, tc := range []struct{ flags []string }{
		{[]string{"--modes", "optimistic"}},
		{[]string{"--group-commit", "true"}},
		{[]string{"--partitions", "16"}},
		{[]string{"--partitions", "16", "--scenario", "transfers"}},
	} {
		_, err := bench(tc.flags...)
		require.Error(t, err, "%v", tc.flags)
		assert.ErrorContains(t, err, tc.flags[0]+" says ")
		assert.ErrorContains(t, err, "but the server runs lock mode, group commit false, 8 partitions")
	}
}

// TestBenchTargetCatchesAWrongServer puts a proxy in front of a real serve that answers
// one deposit in five 201 without passing it on: fast and wrong. Without --redis (HTTP
// only), the bench must fail the run.
func TestBenchTargetCatchesAWrongServer(t *testing.T) {
	data := redistest.MustStart(t)
	base, _ := startServe(t, "--redis", data.Addr(), "--log-level", "warn")
	var n atomic.Int64
	lying := proxyServe(t, base, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/deposits") && r.Header.Get("Idempotency-Key") == "" && n.Add(1)%5 == 0 {
			answerCreated(w, r, `{}`)
			return true
		}
		return false
	})

	dir := t.TempDir()
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--target", lying, "--duration", "300ms", "--workers", "4",
		"--accounts", "10", "--json", filepath.Join(dir, "out.json")}, &out, &errOut)
	t.Log(errOut.String())
	require.Error(t, err, out.String())
	assert.Contains(t, err.Error(), "failed their correctness check")
	assert.Contains(t, out.String(), "Check failures:")
	doc := readBenchJSON(t, filepath.Join(dir, "out.json"))
	require.Len(t, doc.Runs, 1)
	assert.False(t, doc.Runs[0].Correct)
	assert.Nil(t, doc.Ceiling, "no Redis: no ceiling")
	assert.Positive(t, n.Load())
}

// TestBenchTargetReplicas loads one hot account through two serve replicas of one
// deployment (--target a,b): the operations go to both in turn, and the run is correct.
// With --check-sample 0 no account is replayed over HTTP (ledger.Verify still runs).
func TestBenchTargetReplicas(t *testing.T) {
	data := redistest.MustStart(t)
	var counts [2]atomic.Int64
	var urls []string
	for i, extra := range [][]string{nil, {"--relay=false"}} {
		base, _ := startServe(t, append([]string{"--redis", data.Addr(), "--log-level", "warn"}, extra...)...)
		urls = append(urls, proxyServe(t, base, func(_ http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/deposits") {
				counts[i].Add(1)
			}
			return false
		}))
	}
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--target", strings.Join(urls, ","), "--redis", data.Addr(), "--duration", "500ms",
		"--workers", "8", "--accounts", "1", "--mix", "deposit=100", "--ceiling-duration", "0", "--check-sample", "0",
		"--json", filepath.Join(dir, "out.json")}, &out, &errOut)
	t.Log(errOut.String())
	require.NoError(t, err, out.String())
	doc := readBenchJSON(t, filepath.Join(dir, "out.json"))
	require.Len(t, doc.Runs, 1)
	assert.True(t, doc.Runs[0].Correct, "%v", doc.Runs[0].Problems)
	assert.Zero(t, doc.Runs[0].Errors)
	assert.NotContains(t, doc.Runs[0].Check, "replay = snapshot", "--check-sample 0: no replay over HTTP")
	assert.Contains(t, doc.Runs[0].Check, "verify: ")
	// The server's counters are the replicas' sums. Writing one account, both replicas
	// meet version conflicts; seeding one account met none, so the run's are all there are.
	var conflicts, retries float64
	for _, u := range urls {
		m := scrapeAll(t, u+"/metrics")
		conflicts += m.sum("tally_ledger_version_conflicts_total")
		retries += m.sum("tally_ledger_retries_total")
	}
	require.NotNil(t, doc.Runs[0].Conflicts)
	require.NotNil(t, doc.Runs[0].Retries)
	assert.Equal(t, conflicts, float64(*doc.Runs[0].Conflicts), "conflicts of both replicas")
	assert.Equal(t, retries, float64(*doc.Runs[0].Retries), "retries of both replicas")
	a, b := counts[0].Load(), counts[1].Load()
	require.Positive(t, a)
	require.Positive(t, b)
	assert.InDelta(t, 1.0, float64(a)/float64(b), 0.2, "in turn: %d vs %d deposits", a, b)
}
