package bench

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	mrand "math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/ledger"
)

// The HTTP scenarios load a running `tally serve` over HTTP/1.1 keep-alive connections, as
// its clients would, and check the ledger afterwards: their configuration and rows here,
// the clients' load in httpload.go, settle and check in httpcheck.go.

// HTTPConfig configures RunHTTP, the transfers and batch scenarios. The zero value of
// every field but Target and Scenario has a usable default.
type HTTPConfig struct {
	// Target is the base URL of a running tally serve (required).
	Target string
	// Scenario is ScenarioTransfers or ScenarioBatch.
	Scenario string
	// Redis, when set, is the server's data Redis: bench counts its commands and runs
	// ledger.Verify on the server's keys (prefix "tally") after every row.
	Redis redis.UniversalClient
	// LockMasters are the server's lock masters, to count their commands.
	LockMasters []*redis.Client
	// Accounts lists the account counts, one row each (× Placements). Default [10000].
	Accounts []int
	// Placements (transfers): "same" (both accounts share a placement tag: one script)
	// and/or "cross" (different partitions: the saga). Default both.
	Placements []string
	// Clients is the number of concurrent HTTP clients. Default 64.
	Clients int
	// GroupSize (transfers, same) is the number of accounts per placement tag. Default 10.
	GroupSize int
	// BatchSize (batch) is the number of deposits per request. Default 100.
	BatchSize int
	// AtomicBatch (batch): each request is an atomic batch on the accounts of one placement
	// tag (GroupSize accounts per tag), committed in one script call, instead of a
	// non-atomic batch on random accounts.
	AtomicBatch bool
	// APIKey is sent as Authorization: Bearer.
	APIKey string
	// Label fills the table's label column. Default: the server's mode (from its
	// /metrics), or "-".
	Label string
	// HTTPTimeout bounds one request (default 60s); SettleTimeout the wait for pending
	// transfers to end before the check (default 30s).
	HTTPTimeout, SettleTimeout time.Duration
	// Duration of each row's load. Default 10s.
	Duration time.Duration
	// SeedBalance is deposited into every account first. Default 1,000,000.
	SeedBalance int64
	// Partitions is the server's partition count. Default: what the server's /metrics
	// says, or 16; a different value is an error.
	Partitions int
	// Out receives the table; Progress, when set, a status line (a terminal).
	Out, Progress io.Writer
}

// The HTTP scenarios of RunHTTP.
const (
	ScenarioTransfers = "transfers" // POST /v1/transfers between two accounts
	ScenarioBatch     = "batch"     // POST /v1/batch, atomic=false, deposits
)

func (c HTTPConfig) withDefaults() HTTPConfig {
	if len(c.Accounts) == 0 {
		c.Accounts = []int{10000}
	}
	if len(c.Placements) == 0 {
		c.Placements = []string{"same", "cross"}
	}
	orDefault(&c.Clients, DefaultWorkers)
	orDefault(&c.GroupSize, 10)
	orDefault(&c.BatchSize, 100)
	orDefault(&c.Label, "-")
	orDefault(&c.HTTPTimeout, DefaultHTTPTimeout)
	orDefault(&c.SettleTimeout, 30*time.Second)
	orDefault(&c.Duration, DefaultDuration)
	orDefault(&c.SeedBalance, DefaultSeedBalance)
	orDefault(&c.Partitions, DefaultPartitions)
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c
}

// withServer places the accounts by the server's partition count and, unless given a
// Label, labels the rows with the server's mode, as the server's /metrics says
// (tally_ledger_info). A partition count given in c (given: before defaults) that the
// server contradicts is an error. A serve without the metric leaves c as it is.
func (c HTTPConfig) withServer(ctx context.Context, given HTTPConfig, d *httpDriver) (HTTPConfig, error) {
	s, found, err := d.serverLedger(ctx)
	if err != nil || !found {
		return c, err
	}
	if given.Partitions != 0 && given.Partitions != s.partitions {
		return c, s.contradicted("Partitions", given.Partitions)
	}
	c.Partitions = s.partitions
	if given.Label == "" {
		c.Label = string(s.mode)
		if !s.groupCommit {
			c.Label += ", group commit off"
		}
	}
	return c, nil
}

// Validate returns a *FieldError describing the first invalid field of c (after
// defaults).
func (c HTTPConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Scenario != ScenarioTransfers && c.Scenario != ScenarioBatch:
		return invalid("Scenario", "must be %s or %s, got %q", ScenarioTransfers, ScenarioBatch, c.Scenario)
	case c.Target == "":
		return invalid("Target", "is required: the base URL of a running tally serve")
	case strings.Contains(c.Target, ","):
		return invalid("Target", "must be one URL: scenario %s loads one serve", c.Scenario)
	case c.Clients < 1:
		return invalid("Clients", "must be positive")
	case c.GroupSize < 2:
		return invalid("GroupSize", "must be at least 2")
	case c.BatchSize < 1 || c.BatchSize > ledger.MaxBatchOps:
		return invalid("BatchSize", "must be 1..%d", ledger.MaxBatchOps)
	case c.HTTPTimeout < 0:
		return invalid("HTTPTimeout", "must not be negative")
	case c.SettleTimeout < 0:
		return invalid("SettleTimeout", "must not be negative")
	case c.Duration < 0:
		return invalid("Duration", "must not be negative")
	case c.SeedBalance < 0:
		return invalid("SeedBalance", "must not be negative")
	case c.Partitions < 1:
		return invalid("Partitions", "must be positive")
	}
	if err := checkTarget("Target", c.Target); err != nil {
		return err
	}
	for _, n := range c.Accounts {
		if n < 1 {
			return invalid("Accounts", "must be positive, got %d", n)
		}
	}
	for _, p := range c.Placements {
		if p != "same" && p != "cross" {
			return invalid("Placements", "has %q, neither same nor cross", p)
		}
	}
	if c.Scenario == ScenarioTransfers && slices.Min(c.Accounts) < 2 {
		return invalid("Accounts", "must be at least 2: a transfer needs two accounts")
	}
	return nil
}

// RunHTTP runs the transfers or batch scenario against a running serve, one table row per
// account count (× placement), and checks every row's accounts afterwards: over HTTP
// against what the clients were told, and with Redis also with ledger.Verify. It returns an
// error for an invalid cfg, a failed setup or a failed check; individual requests that fail
// are counted in the table.
func RunHTTP(ctx context.Context, cfg HTTPConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	given := cfg
	cfg = cfg.withDefaults()
	stdout := cfg.Out
	d, err := newHTTPDriver(cfg.Target, cfg.APIKey, cfg.Clients, cfg.HTTPTimeout, false)
	if err != nil {
		return err
	}
	defer d.close()
	if cfg, err = cfg.withServer(ctx, given, d); err != nil {
		return err
	}
	hb := &httpBench{cfg: cfg, runID: newRunID(), prog: newProgress(cfg.Progress, time.Now),
		counter: commandCounter{data: cfg.Redis, masters: cfg.LockMasters}, d: d}
	defer hb.prog.clear()
	if cfg.Redis != nil {
		// The prefix serve uses; Open fails on a partition count other than the server's.
		if hb.ledger, err = ledger.Open(ctx, cfg.Redis, ledger.Config{Prefix: "tally", Partitions: cfg.Partitions}); err != nil {
			return err
		}
	}
	counts := cfg.Accounts

	placements := []string{""}
	if cfg.Scenario == ScenarioTransfers {
		placements = cfg.Placements
	}
	fmt.Fprintf(stdout, "Target %s, %d clients, %s per row, %d partitions, seed balance %d; GOMAXPROCS %d, %s.\n\n",
		hb.d.bases[0], cfg.Clients, cfg.Duration, cfg.Partitions, cfg.SeedBalance, runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintln(stdout, "| label | scenario | accounts | ops | ops/s | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | Redis cmds/op data / lock | CPU µs/op client / server / Redis / lock | HTTP statuses | operation statuses | check |")
	fmt.Fprintln(stdout, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
	var failed []string
	for _, n := range counts {
		for _, p := range placements {
			r, err := hb.runRow(ctx, n, p)
			if err != nil {
				return err
			}
			if r.check != nil {
				failed = append(failed, fmt.Sprintf("- %s, %d accounts: %v", r.name, n, r.check))
			}
		}
	}
	fmt.Fprint(stdout, "\nops counts operations the server applied (transfers answered 201 completed or 202 pending; "+
		"batch: deposits answered 201 inside the batch), per second of the run; requests/s counts HTTP requests. "+
		"Latencies are per HTTP request (a whole batch for the batch scenario), over every request that got an answer, "+
		"from HDR histograms (3 significant digits). Redis cmds/op: commands the data Redis and the --lock-redis masters "+
		"executed during the load (INFO commandstats, including those scripts run, and the server's relay) per op; \"-\" without --redis or --lock-redis. "+
		"CPU µs/op: CPU time per op of this process, of the server (process_cpu_seconds_total on its /metrics), of the data Redis "+
		"and of the lock masters (INFO cpu).\n")
	if len(failed) > 0 {
		fmt.Fprintf(stdout, "\nCheck failures:\n%s\n", strings.Join(failed, "\n"))
		return fmt.Errorf("bench: %d of the rows failed their correctness check", len(failed))
	}
	return ctx.Err()
}

// httpBench holds what every row of one run shares.
type httpBench struct {
	cfg     HTTPConfig
	prog    *progress
	runID   string
	d       *httpDriver    // the requests; send, as every status counts
	ledger  *ledger.Ledger // nil without Redis
	counter commandCounter // counts Redis commands; nothing without Redis
	rows    int
}

// rowResult is the outcome of one row.
type rowResult struct {
	name  string
	check error // nil when the correctness check passed
}

// benchAccounts are the accounts of one row with what the clients know about them: every
// answer that applied something adds its amount and event count here.
type benchAccounts struct {
	ids       []string
	partition []int
	groups    int // grouped IDs (placement same, atomic batch): account i has tag i % groups
	delta     []atomic.Int64
	events    []atomic.Int64
}

func newBenchAccounts(ids []string, partitions int) *benchAccounts {
	a := &benchAccounts{ids: ids, partition: make([]int, len(ids)),
		delta: make([]atomic.Int64, len(ids)), events: make([]atomic.Int64, len(ids))}
	for i, id := range ids {
		a.partition[i] = placementPartition(id, partitions)
	}
	return a
}

// groupMember returns a random account of group g: g, g+groups, g+2·groups, ...
func (a *benchAccounts) groupMember(g int, rng *mrand.Rand) int {
	members := (len(a.ids) - g + a.groups - 1) / a.groups
	return g + rng.IntN(members)*a.groups
}

// placementPartition is the partition of an account ID as docs/transfers.md specifies it:
// FNV-1a (32 bit) of the placement tag (the part before the first "..") or of the whole
// ID, modulo the partition count. With --redis the bench checks it against
// ledger.(*Ledger).Partition.
func placementPartition(id string, partitions int) int {
	if i := strings.Index(id, ledger.PlacementSeparator); i > 0 {
		id = id[:i]
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % uint32(partitions))
}

// runRow opens and funds n accounts, runs the load for --duration, settles and checks.
func (hb *httpBench) runRow(ctx context.Context, n int, placement string) (rowResult, error) {
	hb.rows++
	tag := fmt.Sprintf("%s%d", hb.runID, hb.rows)
	var name, kind string // kind starts IDs that are not grouped
	switch {
	case hb.cfg.Scenario == ScenarioBatch && hb.cfg.AtomicBatch:
		name = fmt.Sprintf("atomic batch of %d deposits, one placement tag", hb.cfg.BatchSize)
	case hb.cfg.Scenario == ScenarioBatch:
		name, kind = fmt.Sprintf("batch of %d deposits", hb.cfg.BatchSize), "d"
	case placement == "same":
		name = "transfers, same partition"
	default:
		name, kind = "transfers, cross partition", "x"
	}
	// Grouped: GroupSize accounts per placement tag, account i in group i % groups.
	ids := make([]string, n)
	groups := max(1, n/hb.cfg.GroupSize)
	for i := range ids {
		if kind == "" {
			ids[i] = fmt.Sprintf("g%s.%d..a%d", tag, i%groups, i)
		} else {
			ids[i] = fmt.Sprintf("%s%s.%d", kind, tag, i)
		}
	}
	accts := newBenchAccounts(ids, hb.cfg.Partitions)
	accts.groups = groups
	if placement == "cross" && !slices.ContainsFunc(accts.partition, func(p int) bool { return p != accts.partition[0] }) {
		return rowResult{}, fmt.Errorf("%s: all %d accounts fall into one partition; use more accounts", name, n)
	}
	if hb.ledger != nil {
		for i, id := range ids {
			if p := hb.ledger.Partition(id); p != accts.partition[i] {
				return rowResult{}, fmt.Errorf("account %s: the ledger places it in partition %d, the bench computed %d", id, p, accts.partition[i])
			}
		}
	}

	hb.prog.status("%s, %d accounts: opening and funding (IDs %s…)", name, n, ids[0])
	if err := hb.setup(ctx, accts); err != nil {
		return rowResult{}, fmt.Errorf("%s, %d accounts: setup: %w", name, n, err)
	}
	hb.prog.status("%s, %d accounts: %d clients for %v", name, n, hb.cfg.Clients, hb.cfg.Duration)
	dataBefore, lockBefore, countedBefore := hb.counter.count(ctx)
	cpuBefore := sampleCPU(ctx, hb.d, hb.counter.data, hb.counter.masters)
	var (
		st  *loadStats
		err error
	)
	if hb.cfg.Scenario == ScenarioBatch {
		st, err = hb.runBatch(ctx, accts)
	} else {
		st, err = hb.runTransfers(ctx, accts, placement == "same", tag)
	}
	if err != nil {
		return rowResult{}, err
	}
	cpu := perOpCPU(cpuBefore, sampleCPU(ctx, hb.d, hb.counter.data, hb.counter.masters), st.ops)
	dataAfter, lockAfter, countedAfter := hb.counter.count(ctx)
	counted := countedBefore && countedAfter
	perOp := func(before, after int64, ok bool) string {
		if !ok || st.ops == 0 {
			return "-"
		}
		return strconv.FormatFloat(float64(after-before)/float64(st.ops), 'f', 1, 64)
	}
	cmds := perOp(dataBefore, dataAfter, counted) + " / " + perOp(lockBefore, lockAfter, counted && len(hb.counter.masters) > 0)
	hb.prog.status("%s, %d accounts: settling and checking", name, n)
	check := hb.settle(ctx, accts, st)
	if check == nil {
		check = hb.check(ctx, accts, st)
	}
	verdict := "ok: " + st.checked
	if check != nil {
		verdict = "FAILED"
	}
	q := func(p float64) string { return fmtMs(st.lat.Quantile(p)) }
	fmt.Fprintf(hb.cfg.Out, "| %s | %s | %d | %d | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
		hb.cfg.Label, name, n, st.ops, float64(st.ops)/st.elapsed.Seconds(), float64(st.requests)/st.elapsed.Seconds(),
		q(0.50), q(0.90), q(0.99), q(0.999), fmtMs(st.lat.Max()), cmds, cpu,
		countsSummary(st.httpStatus), countsSummary(st.opStatus), verdict)
	return rowResult{name: name, check: check}, nil
}

// setup opens every account and deposits --seed-balance into it, as the modes scenario
// does (openAccounts), and books what that did.
func (hb *httpBench) setup(ctx context.Context, a *benchAccounts) error {
	if err := openAccounts(ctx, hb.d, a.ids, hb.cfg.SeedBalance, hb.cfg.Clients); err != nil {
		return err
	}
	for i := range a.ids {
		a.delta[i].Add(hb.cfg.SeedBalance)
		a.events[i].Add(2) // AccountOpened, Deposited
	}
	return nil
}

// fmtMs formats d in milliseconds with two decimals.
func fmtMs(d time.Duration) string { return strconv.FormatFloat(ms(d), 'f', 2, 64) }
