package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestBenchModes runs a short `tally bench` over both modes, with and without group
// commit, on a real Redis and three lock masters, and checks that every scenario printed
// a table row with operations and no errors, and that the scenarios' keys were deleted.
func TestBenchModes(t *testing.T) {
	data := redistest.MustStart(t)
	masters := redistest.MustStartN(t, 3)
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench",
		"--redis", data.Addr(), "--lock-redis", strings.Join(redistest.Addrs(masters), ","),
		"--duration", "300ms", "--workers", "4", "--accounts", "1,50", "--ceiling-duration", "200ms",
	}, &out, &errOut)
	t.Log(errOut.String())
	require.NoError(t, err, out.String())

	assert.Contains(t, out.String(), "Load on the ledger library: 16 partitions, max batch 64;")
	rows := benchTable(t, out.String(), "| mode |")
	require.Len(t, rows, 8, "2 account counts × 2 modes × group commit on/off:\n%s", out.String())
	seen := map[string]bool{}
	for _, r := range rows {
		key := r["mode"] + "/" + r["group commit"] + "/" + r["accounts"]
		seen[key] = true
		assert.Equal(t, "0", r["errors"], "%s: errors", key)
		ops, err := strconv.Atoi(r["ops"])
		require.NoError(t, err)
		assert.Positive(t, ops, "%s: operations", key)
		if r["group commit"] == "off" {
			assert.Equal(t, "1.000", r["commits/op"], "%s: one script call per operation without group commit", key)
		}
		assert.NotEqual(t, "-", r["data cmds/op"], "%s: data commands counted", key)
		assert.NotEqual(t, "-", r["lock cmds/op"], "%s: lock master commands counted", key)
		if r["mode"] == "lock" {
			assert.NotEqual(t, "-", r["lease wait p50 / p99 ms"], "%s: lease waits recorded", key)
		}
	}
	for _, key := range []string{"optimistic/on/1", "optimistic/off/1", "lock/on/1", "lock/off/1",
		"optimistic/on/50", "optimistic/off/50", "lock/on/50", "lock/off/50"} {
		assert.True(t, seen[key], "row %s missing", key)
	}
	assert.NotContains(t, out.String(), "Errors by code:")

	n, err := data.Client().DBSize(t.Context()).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "every scenario deletes its keys")
}

// TestBenchCPUProfile checks that --cpuprofile writes a CPU profile of the run (a gzipped
// pprof protobuf), and that a file it cannot create fails the command before any load.
func TestBenchCPUProfile(t *testing.T) {
	data := redistest.MustStart(t)
	path := filepath.Join(t.TempDir(), "bench.prof")
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--redis", data.Addr(), "--duration", "200ms", "--workers", "4",
		"--accounts", "10", "--modes", "optimistic", "--group-commit", "true", "--ceiling-duration", "0",
		"--cpuprofile", path}, &out, &errOut)
	require.NoError(t, err, errOut.String())
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err, "a pprof profile is gzipped")
	raw, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.NotEmpty(t, raw)

	out.Reset()
	err = run(t.Context(), []string{"bench", "--redis", data.Addr(), "--duration", "200ms",
		"--cpuprofile", filepath.Join(t.TempDir(), "missing", "bench.prof")}, &out, &errOut)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--cpuprofile")
	assert.NotContains(t, out.String(), "| mode |", "no load ran")
}

// TestBenchRelay runs a short relay scenario and checks that it reports throughput and lag
// and that every event took effect exactly once.
func TestBenchRelay(t *testing.T) {
	data := redistest.MustStart(t)
	masters := redistest.MustStartN(t, 3)
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"bench", "--scenario", "relay",
		"--redis", data.Addr(), "--lock-redis", strings.Join(redistest.Addrs(masters), ","),
		"--accounts", "20", "--backlog", "300", "--rate", "300", "--duration", "300ms", "--workers", "8",
		"--poll-interval", "5ms",
	}, &out, &errOut)
	t.Log(errOut.String())
	require.NoError(t, err, out.String())

	rows := benchTable(t, out.String(), "| measure |")
	values := map[string]string{}
	for _, r := range rows {
		values[r["measure"]] = r["value"]
	}
	assert.Equal(t, "0", values["write errors"])
	assert.Equal(t, "0", values["duplicates seen by dedup"])
	assert.True(t, strings.HasPrefix(values["exactly once in effect"], "yes: "), values["exactly once in effect"])
	// 20 accounts opened and seeded, 300 backlog operations.
	assert.True(t, strings.HasPrefix(values["backlog delivered (events)"], "340 in "), values["backlog delivered (events)"])
	for _, m := range []string{"relay throughput (events/s)", "end-to-end lag p50 / p95 / p99 / max (ms)"} {
		assert.NotEmpty(t, values[m], m)
	}
}

// TestBenchFlags checks the errors for missing or invalid flags.
func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"both redis flags", []string{"bench", "--redis", "127.0.0.1:1", "--redis-cluster", "127.0.0.1:2"}, "not both"},
		{"unknown scenario", []string{"bench", "--scenario", "x", "--redis", "127.0.0.1:1"}, "--scenario"},
		{"bad mix", []string{"bench", "--mix", "deposit=1,loan=2"}, "--mix"},
		{"bad group commit", []string{"bench", "--group-commit", "maybe"}, "--group-commit"},
		{"target sweeps modes", []string{"bench", "--target", "http://127.0.0.1:1", "--modes", "lock,optimistic"}, "--target"},
		{"no workers", []string{"bench", "--workers", "0", "--redis", "127.0.0.1:1"}, "--workers"},
		{"bad prefix", []string{"bench", "--prefix", "a:b", "--redis", "127.0.0.1:1"}, "--prefix"},
		{"bad spread", []string{"bench", "--spread", "random", "--redis", "127.0.0.1:1"}, "--spread must be request or worker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(t.Context(), tc.args, &out, &errOut)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// benchTable returns the rows of the first markdown table in out whose header line starts
// with header, as column name → cell.
func benchTable(t *testing.T, out, header string) []map[string]string {
	t.Helper()
	cells := func(line string) []string {
		parts := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts
	}
	var (
		cols []string
		rows []map[string]string
	)
	for _, line := range strings.Split(out, "\n") {
		switch {
		case cols == nil && strings.HasPrefix(line, header):
			cols = cells(line)
		case cols != nil && strings.HasPrefix(line, "|---"):
		case cols != nil && strings.HasPrefix(line, "|"):
			c := cells(line)
			require.Len(t, c, len(cols), "row %q", line)
			row := map[string]string{}
			for i, name := range cols {
				row[name] = c[i]
			}
			rows = append(rows, row)
		case cols != nil:
			return rows
		}
	}
	require.NotNil(t, cols, "no table with header %q in:\n%s", header, out)
	return rows
}
