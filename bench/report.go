package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// tableHeader is the results table's header; writeRow prints rows in its column order.
const tableHeader = "| mode | group commit | accounts | workers | ops | ops/s | × ceiling | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | conflicts | retries | lock failures | commits/op | lease wait p50 / p99 ms | data cmds/op | lock cmds/op | CPU µs/op client / server / Redis / lock | server RSS MB | correct |\n" +
	"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"

// writeRow prints one run as a table row.
func writeRow(w io.Writer, r Result) {
	dash := func(p *float64, prec int) string {
		if p == nil {
			return "-"
		}
		return strconv.FormatFloat(*p, 'f', prec, 64)
	}
	count := func(p *int64) string {
		if p == nil {
			return "-"
		}
		return strconv.FormatInt(*p, 10)
	}
	wait := "-"
	if r.LeaseWaitP50Ms != nil {
		wait = dash(r.LeaseWaitP50Ms, 2) + " / " + dash(r.LeaseWaitP99Ms, 2)
	}
	correct := "yes"
	if !r.Correct {
		correct = "NO"
	}
	cpu := cpuPerOp{client: r.ClientCPUUs, server: r.ServerCPUUs, redis: r.RedisCPUUs, lock: r.LockCPUUs}.String()
	fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %.0f | %s | %.2f | %.2f | %.2f | %.2f | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
		r.Mode, onOff(r.GroupCommit), r.Accounts, r.Workers, r.Ops, r.OpsPerSec, dash(r.CeilingFraction, 2),
		r.P50Ms, r.P90Ms, r.P99Ms, r.P999Ms, r.Errors, count(r.Conflicts), count(r.Retries), count(r.LockFailures),
		dash(r.CommitsPerOp, 3), wait, dash(r.DataCmdsPerOp, 1), dash(r.LockCmdsPerOp, 1), cpu, dash(r.ServerRSSMaxMB, 0), correct)
}

// writeFooter explains the columns and lists errors and check failures.
func writeFooter(w io.Writer, rep Report) {
	fmt.Fprint(w, "\nops counts answered operations (applied, or refused for insufficient funds) and ops/s divides them by the run's time; "+
		"× ceiling is ops/s as a fraction of the raw commit ceiling. Latencies are per operation as the caller sees it "+
		"(a hold: place and capture or void), from HDR histograms (3 significant digits). errors are operations that failed otherwise. "+
		"conflicts, retries, lock failures and commits/op (commit script calls per committed operation) come from the ledger's counters "+
		"(over HTTP: the server's /metrics). Lease wait is the Locker's local queue plus acquisition. cmds/op are the commands Redis executed "+
		"(INFO commandstats, including those scripts run) per operation, on the data Redis and summed over the lock masters. "+
		"CPU µs/op is the CPU time each side used during the run per operation: client this process (with the ledger it drives, "+
		"without --target), server the --target replicas (process_cpu_seconds_total), Redis the data Redis and lock the lock masters "+
		"(INFO cpu, summed); "+
		"ops/s × µs/op / 10^6 is the cores a side kept busy, and Redis's µs/op against the ceiling's µs per call is how much "+
		"of the ceiling Redis alone allows. server RSS MB is the largest resident set of any --target replica during the load "+
		"(process_resident_memory_bytes, sampled every 250 ms). "+
		"correct: the end-of-run check (conservation, no negative balance, replay = snapshot) passed.\n")
	var errs, fails []string
	for _, r := range rep.Runs {
		name := fmt.Sprintf("%s, group commit %s, %d accounts", r.Mode, onOff(r.GroupCommit), r.Accounts)
		if r.Errors > 0 {
			var parts []string
			for _, c := range slices.Sorted(maps.Keys(r.ErrorsByCode)) {
				parts = append(parts, fmt.Sprintf("%s=%d", c, r.ErrorsByCode[c]))
			}
			errs = append(errs, fmt.Sprintf("- %s: %s", name, strings.Join(parts, ", ")))
		}
		if !r.Correct {
			fails = append(fails, fmt.Sprintf("- %s: %s", name, strings.Join(r.Problems, "; ")))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nErrors by code:\n%s\n", strings.Join(errs, "\n"))
	}
	if len(fails) > 0 {
		fmt.Fprintf(w, "\nCheck failures:\n%s\n", strings.Join(fails, "\n"))
	}
}

// WriteJSON writes the report as indented JSON: {"ceiling_ops_per_sec", "runs":[...]}.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if r.Runs == nil {
		r.Runs = []Result{}
	}
	return enc.Encode(r)
}

// csvHeader names the CSV columns.
var csvHeader = []string{"mode", "group_commit", "accounts", "workers", "ops", "ops_per_sec", "ceiling_ops_per_sec", "ceiling_fraction",
	"p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "errors", "rejected", "conflicts", "retries", "lock_failures",
	"commits_per_op", "lease_wait_p50_ms", "lease_wait_p99_ms", "data_cmds_per_op", "lock_cmds_per_op",
	"client_cpu_us_per_op", "server_cpu_us_per_op", "redis_cpu_us_per_op", "lock_cpu_us_per_op", "ceiling_redis_cpu_us_per_op", "server_rss_max_mb", "correct", "mix", "target", "errors_by_code"}

// WriteCSV writes one line per run, with a header line; unknown values are empty.
func (r Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	pf := func(p *float64, prec int) string {
		if p == nil {
			return ""
		}
		return f(*p, prec)
	}
	pi := func(p *int64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatInt(*p, 10)
	}
	for _, x := range r.Runs {
		var codes []string
		for _, c := range slices.Sorted(maps.Keys(x.ErrorsByCode)) {
			codes = append(codes, fmt.Sprintf("%s=%d", c, x.ErrorsByCode[c]))
		}
		rec := []string{x.Mode, strconv.FormatBool(x.GroupCommit), strconv.Itoa(x.Accounts), strconv.Itoa(x.Workers),
			strconv.FormatInt(x.Ops, 10), f(x.OpsPerSec, 1), pf(r.CeilingOpsPerSec, 1), pf(x.CeilingFraction, 4),
			f(x.P50Ms, 3), f(x.P90Ms, 3), f(x.P99Ms, 3), f(x.P999Ms, 3), f(x.MaxMs, 3),
			strconv.FormatInt(x.Errors, 10), strconv.FormatInt(x.Rejected, 10), pi(x.Conflicts), pi(x.Retries), pi(x.LockFailures),
			pf(x.CommitsPerOp, 4), pf(x.LeaseWaitP50Ms, 3), pf(x.LeaseWaitP99Ms, 3), pf(x.DataCmdsPerOp, 2), pf(x.LockCmdsPerOp, 2),
			pf(x.ClientCPUUs, 2), pf(x.ServerCPUUs, 2), pf(x.RedisCPUUs, 2), pf(x.LockCPUUs, 2), pf(r.CeilingRedisCPUUs, 2), pf(x.ServerRSSMaxMB, 1),
			strconv.FormatBool(x.Correct), x.Mix, x.Target, strings.Join(codes, " ")}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
