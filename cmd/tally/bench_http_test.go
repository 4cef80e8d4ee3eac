package main

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestBenchHTTP runs the transfers (same and cross partition) and batch scenarios briefly
// against an in-process serve on a real Redis, and checks that every row reports
// operations and passed its correctness check, including ledger.Verify. No speed is
// asserted: speed targets live in docs/benchmarks-transfers.md.
func TestBenchHTTP(t *testing.T) {
	for _, mode := range []string{"optimistic", "lock"} {
		t.Run(mode, func(t *testing.T) {
			data := redistest.MustStart(t)
			base, _ := startServe(t, "--redis", data.Addr(), "--concurrency", mode, "--log-level", "warn")
			for _, tc := range []struct {
				name string
				args []string
				rows int
			}{
				{"transfers", []string{"--scenario", "transfers", "--placement", "same,cross", "--group-size", "5"}, 2},
				{"batch", []string{"--scenario", "batch", "--batch-size", "50"}, 1},
				{"atomic batch", []string{"--scenario", "batch", "--batch-size", "50", "--batch-atomic", "--group-size", "5"}, 1},
			} {
				t.Run(tc.name, func(t *testing.T) {
					var out, errOut bytes.Buffer
					err := run(t.Context(), append([]string{"bench", "--target", base, "--redis", data.Addr(),
						"--accounts", "20", "--clients", "8", "--duration", "1s"}, tc.args...), &out, &errOut)
					t.Log(errOut.String())
					require.NoError(t, err, out.String())
					rows := benchTable(t, out.String(), "| label |")
					require.Len(t, rows, tc.rows, out.String())
					for _, r := range rows {
						assert.Equal(t, mode, r["label"], "no --label: the server's mode, from its /metrics")
						ops, err := strconv.Atoi(r["ops"])
						require.NoError(t, err)
						assert.Positive(t, ops, "%s: operations", r["scenario"])
						assert.True(t, strings.HasPrefix(r["check"], "ok: "), "%s: check %q", r["scenario"], r["check"])
						assert.Contains(t, r["check"], "verify: ", "%s: ledger.Verify ran", r["scenario"])
						assert.NotEqual(t, "0.00", r["p99 ms"], "%s: latencies recorded", r["scenario"])
						assert.NotContains(t, r["Redis cmds/op data / lock"], "- /", "%s: data Redis commands counted", r["scenario"])
						cpu := strings.Split(r["CPU µs/op client / server / Redis / lock"], " / ")
						if assert.Len(t, cpu, 4, "%s: CPU column", r["scenario"]) {
							assert.NotContains(t, cpu[:3], "-", "%s: client, server and Redis CPU measured", r["scenario"])
						}
						assert.NotContains(t, r["operation statuses"], "rejected", "%s: no batch refused", r["scenario"])
						// The status lines the server sent: a batch is 200; a transfer 201, or 202
						// while pending (the bench infers them from the transfer's status).
						codes := map[string]bool{"200": true}
						if tc.name == "transfers" {
							codes = map[string]bool{"201": true, "202": true}
						}
						for _, kv := range strings.Fields(r["HTTP statuses"]) {
							code, _, _ := strings.Cut(kv, "=")
							assert.True(t, codes[code], "%s: HTTP status %s", r["scenario"], kv)
						}
					}
				})
			}
		})
	}
}

// TestBenchHTTPCatchesAWrongServer puts a proxy in front of a real serve that answers one
// transfer in five 201 completed without passing it on: fast and wrong. The bench must
// fail its check (HTTP only, no --redis).
func TestBenchHTTPCatchesAWrongServer(t *testing.T) {
	data := redistest.MustStart(t)
	base, _ := startServe(t, "--redis", data.Addr(), "--log-level", "warn")
	var n atomic.Int64
	lying := proxyServe(t, base, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/transfers" && n.Add(1)%5 == 0 {
			answerCreated(w, r, `{"status":"completed"}`)
			return true
		}
		return false
	})

	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--target", lying, "--scenario", "transfers", "--placement", "cross",
		"--accounts", "20", "--clients", "4", "--duration", "500ms", "--http-timeout", "10s"}, &out, &errOut)
	t.Log(errOut.String())
	require.Error(t, err, out.String())
	assert.Contains(t, err.Error(), "failed their correctness check")
	assert.Contains(t, out.String(), "Check failures:")
	assert.Contains(t, out.String(), "the answers add up to")
	assert.Positive(t, n.Load())
}

// TestBenchHTTPFlags checks the HTTP scenarios' flag errors; they need no Redis.
func TestBenchHTTPFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"--scenario", "transfers"}, "--target"},
		{"bad target", []string{"--scenario", "batch", "--target", "127.0.0.1:1"}, "--target must be"},
		{"no clients", []string{"--scenario", "transfers", "--target", "http://127.0.0.1:1", "--clients", "0"}, "--clients"},
		{"bad placement", []string{"--scenario", "transfers", "--target", "http://127.0.0.1:1", "--placement", "near"}, "--placement"},
		{"batch too big", []string{"--scenario", "batch", "--target", "http://127.0.0.1:1", "--batch-size", "1001"}, "--batch-size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), append([]string{"bench"}, tc.args...), &out, &errOut)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Empty(t, out.String())
		})
	}
}

// BenchmarkHTTP runs the HTTP scenarios for 5 s each against an in-process serve on real
// Redis servers (lock mode: 3 Redlock masters), so that one CPU profile shows where the
// server's time goes (the load generator's frames are in the same profile, under
// httpBench):
//
//	go test ./cmd/tally -run '^$' -bench 'HTTP/optimistic/transfers-cross' -cpuprofile /tmp/cpu.out
//	go tool pprof -top /tmp/cpu.out
//
// It reports operations/s and p99; the targets and results are in docs/benchmarks.md
// (section 3).
func BenchmarkHTTP(b *testing.B) {
	for _, mode := range []string{"optimistic", "lock"} {
		b.Run(mode, func(b *testing.B) {
			data := redistest.MustStart(b)
			args := []string{"--redis", data.Addr(), "--concurrency", mode, "--log-level", "error"}
			if mode == "lock" {
				args = append(args, "--lock-redis", strings.Join(redistest.Addrs(redistest.MustStartN(b, 3)), ","))
			}
			base, _ := startServe(b, args...)
			for _, sc := range []struct{ name, args string }{
				{"transfers-cross", "--scenario transfers --placement cross --accounts 10000"},
				{"transfers-same", "--scenario transfers --placement same --accounts 10000"},
				{"batch-100", "--scenario batch --batch-size 100 --accounts 10000"},
			} {
				b.Run(sc.name, func(b *testing.B) {
					for range b.N {
						var out, errOut bytes.Buffer
						err := run(b.Context(), append([]string{"bench", "--target", base, "--clients", "64", "--duration", "5s"},
							strings.Fields(sc.args)...), &out, &errOut)
						require.NoError(b, err, "%s\n%s", out.String(), errOut.String())
						row := lastRow(out.String())
						require.Len(b, row, 15, out.String())
						ops, _ := strconv.ParseFloat(row[4], 64)
						p99, _ := strconv.ParseFloat(row[8], 64)
						b.ReportMetric(ops, "ops/s")
						b.ReportMetric(p99, "p99-ms")
						b.Log(strings.Join(row, " | "))
					}
				})
			}
		})
	}
}

// lastRow returns the cells of the last table row in out.
func lastRow(out string) []string {
	var row []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, "| label") {
			row = strings.Split(strings.Trim(line, "| "), " | ")
		}
	}
	return row
}
