package bench_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/bench"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// mustLocker returns a Locker over masters whose lease waits go to waits.
func mustLocker(t *testing.T, masters []redis.UniversalClient, waits *bench.LeaseWaits) *lock.Locker {
	t.Helper()
	l, err := lock.New(masters, lock.Config{Hooks: lock.Hooks{Acquired: waits.Acquired}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// shortConfig is a brief run of every kind of operation.
func shortConfig(rdb redis.UniversalClient) bench.Config {
	mix, _ := bench.ParseMix("deposit=50,withdrawal=20,transfer=20,hold=10")
	return bench.Config{
		Redis: rdb, Mix: mix, Accounts: []int{1, 20}, Modes: []ledger.Mode{ledger.ModeOptimistic},
		GroupCommit: []bool{true}, Workers: 8, Duration: 300 * time.Millisecond,
		CeilingDuration: 200 * time.Millisecond, CeilingConns: 8, Partitions: 4,
	}
}

// TestRunOnEveryRedis runs every kind of operation briefly on each Redis the project
// supports (standalone, Cluster, embedded) and checks that each run did work, was correct
// and left no keys behind.
func TestRunOnEveryRedis(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			var out bytes.Buffer
			cfg := shortConfig(rdb)
			cfg.Out = &out
			rep, err := bench.Run(t.Context(), cfg)
			require.NoError(t, err, out.String())
			t.Log(out.String())
			require.True(t, rep.OK(), out.String())
			require.NotNil(t, rep.CeilingOpsPerSec)
			assert.Positive(t, *rep.CeilingOpsPerSec)
			require.Len(t, rep.Runs, 2)
			for _, r := range rep.Runs {
				assert.Positive(t, r.Ops, "%d accounts", r.Accounts)
				assert.Zero(t, r.Errors, "%d accounts: %v", r.Accounts, r.ErrorsByCode)
				assert.Contains(t, r.Check, "verify: ", "ledger.Verify ran")
				require.NotNil(t, r.CeilingFraction)
				assert.InDelta(t, r.OpsPerSec / *rep.CeilingOpsPerSec, *r.CeilingFraction, 1e-9)
				// CPU per operation: this process's always, no server's without a
				// target, the data Redis's where INFO cpu reports it (not the embedded).
				require.NotNil(t, r.ClientCPUUs)
				assert.Positive(t, *r.ClientCPUUs)
				assert.Nil(t, r.ServerCPUUs)
				assert.Nil(t, r.ServerRSSMaxMB, "no server")
				assert.Nil(t, r.LockCPUUs, "no lock masters")
				if b.Name == "embedded" {
					assert.Nil(t, r.RedisCPUUs)
				} else {
					require.NotNil(t, r.RedisCPUUs)
					assert.Positive(t, *r.RedisCPUUs)
				}
			}
			if b.Name == "embedded" {
				assert.Nil(t, rep.CeilingRedisCPUUs)
			} else {
				require.NotNil(t, rep.CeilingRedisCPUUs, "Redis CPU per ceiling call")
				assert.Positive(t, *rep.CeilingRedisCPUUs)
			}
			assert.NotContains(t, rep.Runs[0].OpsByKind, "transfer", "one account: no transfers")
			for _, k := range []string{"deposit", "withdrawal", "transfer", "hold"} {
				assert.Positive(t, rep.Runs[1].OpsByKind[k], "20 accounts: %s", k)
			}
			n, err := rdb.DBSize(t.Context()).Result() // a Cluster's: summed over its masters
			require.NoError(t, err)
			assert.Zero(t, n, "every run deletes its keys, the ceiling too")
		})
	}
}

// TestRunCatchesCorruption corrupts one account's snapshot balance in Redis after the
// load and before the check, as a fast but wrong write path would leave it: the run must
// be reported incorrect, by both the conservation check and ledger.Verify.
func TestRunCatchesCorruption(t *testing.T) {
	data := redistest.MustStart(t)
	rdb := data.Client()
	var out bytes.Buffer
	cfg := shortConfig(rdb)
	cfg.Accounts, cfg.Out, cfg.CeilingDuration = []int{20}, &out, -1
	cfg.AfterLoad = func(r bench.RunInfo) error {
		victim := r.Accounts[3]
		key := fmt.Sprintf("%s:{%d}:acct:%s", r.Prefix, r.Ledger.Partition(victim), victim)
		return rdb.HIncrBy(context.Background(), key, "b:USD", 1).Err()
	}
	rep, err := bench.Run(t.Context(), cfg)
	require.NoError(t, err)
	t.Log(out.String())
	require.Len(t, rep.Runs, 1)
	r := rep.Runs[0]
	assert.False(t, r.Correct)
	assert.False(t, rep.OK())
	assert.Nil(t, rep.CeilingOpsPerSec, "ceiling skipped")
	problems := strings.Join(r.Problems, "\n")
	assert.Contains(t, problems, "the answers add up to", "the account's balance against the answers")
	assert.Contains(t, problems, "money not conserved")
	assert.Contains(t, problems, "verify: ", "ledger.Verify: snapshot differs from replay")
	assert.Contains(t, out.String(), "| NO |")
	assert.Contains(t, out.String(), "Check failures:")
}

// TestRunLockMode runs lock mode on three masters and checks that lease waits and lock
// master commands are reported.
func TestRunLockMode(t *testing.T) {
	data := redistest.MustStart(t)
	masters := redistest.MustStartN(t, 3)
	var clients []redis.UniversalClient
	var counted []*redis.Client
	for _, m := range masters {
		clients = append(clients, m.Client())
		counted = append(counted, m.Client())
	}
	waits := bench.NewLeaseWaits()
	cfg := shortConfig(data.Client())
	cfg.Modes, cfg.GroupCommit, cfg.Accounts = []ledger.Mode{ledger.ModeLock}, []bool{true, false}, []int{10}
	cfg.Locker, cfg.LeaseWaits, cfg.LockMasters = mustLocker(t, clients, waits), waits, counted
	var progress bytes.Buffer
	cfg.Progress = &progress // as on a terminal
	rep, err := bench.Run(t.Context(), cfg)
	require.NoError(t, err)
	require.True(t, rep.OK())
	assert.Contains(t, progress.String(), "\r\033[Klock, group commit on, 10 accounts: opening and funding the accounts")
	assert.True(t, strings.HasSuffix(progress.String(), "\r\033[K"), "the line is erased at the end")
	require.Len(t, rep.Runs, 2)
	for _, r := range rep.Runs {
		require.NotNil(t, r.LeaseWaitP99Ms, "group commit %v", r.GroupCommit)
		require.NotNil(t, r.LockCmdsPerOp)
		assert.Positive(t, *r.LockCmdsPerOp)
		require.NotNil(t, r.LockCPUUs, "the lock masters' CPU per operation")
		assert.Positive(t, *r.LockCPUUs)
		require.NotNil(t, r.DataCmdsPerOp)
		assert.Positive(t, *r.DataCmdsPerOp)
		require.NotNil(t, r.CommitsPerOp)
	}
	assert.InDelta(t, 1.0, *rep.Runs[1].CommitsPerOp, 1e-9, "no group commit: one commit per operation")
}

// TestReportFiles checks the JSON schema, the CSV and the SVG of a real run.
func TestReportFiles(t *testing.T) {
	data := redistest.MustStart(t)
	cfg := shortConfig(data.Client())
	cfg.Modes, cfg.GroupCommit = []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock}, []bool{true}
	waits := bench.NewLeaseWaits()
	cfg.Locker, cfg.LeaseWaits = mustLocker(t, []redis.UniversalClient{data.Client()}, waits), waits
	rep, err := bench.Run(t.Context(), cfg)
	require.NoError(t, err)
	require.Len(t, rep.Runs, 4)

	t.Run("json", func(t *testing.T) {
		var buf bytes.Buffer
		require.NoError(t, rep.WriteJSON(&buf))
		var doc map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(buf.Bytes(), &doc))
		assert.ElementsMatch(t, []string{"ceiling_ops_per_sec", "ceiling_redis_cpu_us_per_op", "runs"}, keys(doc))
		var ceiling float64
		require.NoError(t, json.Unmarshal(doc["ceiling_ops_per_sec"], &ceiling))
		assert.Positive(t, ceiling)
		var runs []map[string]any
		require.NoError(t, json.Unmarshal(doc["runs"], &runs))
		require.Len(t, runs, 4)
		for _, r := range runs {
			for field, kind := range map[string]string{"mode": "string", "group_commit": "bool", "accounts": "number",
				"workers": "number", "ops_per_sec": "number", "p50_ms": "number", "p99_ms": "number", "errors": "number", "correct": "bool",
				"client_cpu_us_per_op": "number", "redis_cpu_us_per_op": "number"} {
				require.Contains(t, r, field)
				switch kind {
				case "string":
					assert.IsType(t, "", r[field], field)
				case "bool":
					assert.IsType(t, true, r[field], field)
				default:
					assert.IsType(t, 0.0, r[field], field)
				}
			}
			assert.Contains(t, []any{"optimistic", "lock"}, r["mode"])
			assert.Equal(t, true, r["correct"])
			assert.Equal(t, 8.0, r["workers"])
			assert.Positive(t, r["ops_per_sec"])
			assert.GreaterOrEqual(t, r["p99_ms"], r["p50_ms"])
		}
	})
	t.Run("csv", func(t *testing.T) {
		var buf bytes.Buffer
		require.NoError(t, rep.WriteCSV(&buf))
		recs, err := csv.NewReader(&buf).ReadAll()
		require.NoError(t, err)
		require.Len(t, recs, 5, "a header and one line per run")
		assert.Equal(t, []string{"mode", "group_commit", "accounts", "workers", "ops", "ops_per_sec"}, recs[0][:6])
		for _, rec := range recs[1:] {
			assert.Len(t, rec, len(recs[0]))
		}
	})
	t.Run("svg", func(t *testing.T) {
		var buf bytes.Buffer
		require.NoError(t, rep.WriteSVG(&buf))
		s := buf.String()
		assert.Contains(t, s, "<svg")
		assert.Contains(t, s, "</svg>")
		for _, text := range []string{"Throughput", "p99 latency", "accounts", "optimistic, group commit on", "lock, group commit on", "raw commit ceiling"} {
			assert.Contains(t, s, text)
		}
		assert.Error(t, bench.Report{}.WriteSVG(&buf), "nothing to draw")
	})
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestConfigValidate checks the refusals of Validate, and that a refusal of one field is
// a *FieldError naming it (tally bench turns it into an error about the flag).
func TestConfigValidate(t *testing.T) {
	ok := bench.Config{Redis: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})}
	for _, tc := range []struct {
		name  string
		edit  func(*bench.Config)
		want  string
		field string // "" when the error is not a *FieldError
	}{
		{"no redis or target", func(c *bench.Config) { c.Redis = nil }, "a Redis or a Target", ""},
		{"bad target", func(c *bench.Config) { c.Target = "127.0.0.1:8080" }, "http(s) base URL", "Target"},
		{"bad second replica", func(c *bench.Config) {
			c.Target = "http://127.0.0.1:8080,127.0.0.1:8081"
			c.Modes, c.GroupCommit = []ledger.Mode{ledger.ModeOptimistic}, []bool{true}
		}, `got "127.0.0.1:8081"`, "Target"},
		{"target sweeps modes", func(c *bench.Config) {
			c.Target, c.Modes = "http://127.0.0.1:1", []ledger.Mode{ledger.ModeLock, ledger.ModeOptimistic}
		}, "cannot change", "Target"},
		{"lock without locker", func(c *bench.Config) {}, "Locker", "Locker"},
		{"unknown mode", func(c *bench.Config) { c.Modes = []ledger.Mode{"fast"} }, "unknown mode", "Modes"},
		{"zero accounts", func(c *bench.Config) { c.Modes, c.Accounts = []ledger.Mode{"optimistic"}, []int{0} }, "positive", "Accounts"},
		{"bad prefix", func(c *bench.Config) { c.Modes, c.Prefix = []ledger.Mode{"optimistic"}, "a:b" }, "prefix", "Prefix"},
		{"bad spread", func(c *bench.Config) { c.Modes, c.Spread = []ledger.Mode{"optimistic"}, "random" }, "request or worker", "Spread"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			var fe *bench.FieldError
			if tc.field == "" {
				assert.NotErrorAs(t, err, &fe)
				return
			}
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tc.field, fe.Field)
		})
	}
	c := ok
	c.Modes = []ledger.Mode{ledger.ModeOptimistic}
	assert.NoError(t, c.Validate())
}
