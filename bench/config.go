package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/ledger"
)

// Config configures a load test (Run). The zero value of every field but Redis or Target
// has a usable default.
type Config struct {
	// Redis is the data Redis. Without Target the library runs on it (each run under a
	// fresh key prefix) and Redis is required. With Target it is optional: given, it must be
	// the server's data Redis, and the bench measures its raw commit ceiling and runs
	// ledger.Verify on it (Prefix "tally", the server's) after every run.
	Redis redis.UniversalClient
	// Target is the base URL of a running `tally serve` (http://host:port), or several,
	// comma-separated: replicas of one deployment, which the operations then go to in turn
	// (a hot account written through every replica). Empty: the bench drives the library on
	// Redis.
	Target string
	// Spread is how the operations go to several Target replicas: SpreadRequest (the
	// default) sends each request to the next replica in turn, as a per-request (L7)
	// balancer does; SpreadWorker keeps each worker on one replica (worker i on replica
	// i mod n), as a client's keep-alive connection through a connection (L4) balancer stays.
	Spread string
	// APIKey is sent as "Authorization: Bearer" to Target.
	APIKey string
	// HTTPTimeout bounds one request to Target. Default 60s.
	HTTPTimeout time.Duration

	// Locker provides the leases of lock mode (library only); required when Modes has
	// ModeLock and Target is empty.
	Locker ledger.Locker
	// LeaseWaits, when set, is fed by the Locker's Acquired hook; the bench reports its
	// quantiles per run.
	LeaseWaits *LeaseWaits
	// LockMasters are the Redlock masters when other than Redis, only to count the
	// commands they execute (INFO commandstats).
	LockMasters []*redis.Client

	// Mix weighs the kinds of operations. Default DefaultMix (deposits, 1 withdrawal in 10).
	Mix Mix
	// Accounts lists the account counts to sweep. Default [1, 10000].
	Accounts []int
	// Modes lists the concurrency modes to sweep. Default [optimistic, lock]. With Target
	// the server's mode cannot change: the results are labelled with the one its /metrics
	// says (tally_ledger_info), and an entry given must be that one; from a serve without
	// the metric, the entry given only labels them (default optimistic, serve's default).
	Modes []ledger.Mode
	// GroupCommit lists the group commit settings to sweep. Default [true, false]. With
	// Target: the server's, as for Modes (default true).
	GroupCommit []bool
	// Workers is the number of concurrent writers, each in a closed loop. Default 64.
	Workers int
	// Duration is how long each run's load lasts. Default 10s.
	Duration time.Duration
	// Ops, when positive, ends a run's load after this many operations (or Duration,
	// whichever comes first).
	Ops int64
	// Partitions is the ledger's partition count. Default 16; with Target the server's
	// (from its /metrics, as for Modes), and a different value is an error.
	Partitions int
	// MaxBatch is the library's largest group commit. Default 64.
	MaxBatch int
	// SeedBalance is deposited into every account before the load. Default 1,000,000.
	SeedBalance int64
	// Prefix starts the key prefix of every run (library) and the account IDs. A run adds
	// a random run ID and its number. Default "bench".
	Prefix string
	// KeepKeys keeps each library run's keys instead of deleting them after its check.
	KeepKeys bool
	// CheckSample is how many accounts of each run (spread over them) are replayed and
	// compared with their snapshot over HTTP. The library runs ledger.Verify instead, which
	// replays every account of the run. Default 100; negative: none.
	CheckSample int

	// CeilingDuration is how long the raw commit ceiling is measured; negative skips it.
	// Default 3s.
	CeilingDuration time.Duration
	// CeilingConns is the number of connections the ceiling is measured from. Default 64.
	CeilingConns int

	// Out receives the results table as runs complete. Nil discards it.
	Out io.Writer
	// Progress receives a live progress line (rewritten with \r). Nil: quiet. Give it a
	// terminal only.
	Progress io.Writer
	// Now is the clock for elapsed times. Default time.Now.
	Now func() time.Time
	// AfterLoad, when set, runs after each run's load and before its correctness check;
	// tests use it to corrupt a run. An error ends Run.
	AfterLoad func(r RunInfo) error
}

// RunInfo describes one run to Config.AfterLoad.
type RunInfo struct {
	Prefix   string   // the key prefix of the run's ledger
	Accounts []string // the run's account IDs
	Ledger   *ledger.Ledger
}

// Defaults shared by Config, HTTPConfig and RelayConfig (and `tally bench`'s flags).
const (
	DefaultWorkers     = 64 // Config.Workers, HTTPConfig.Clients, RelayConfig.Workers
	DefaultDuration    = 10 * time.Second
	DefaultPartitions  = 16
	DefaultMaxBatch    = 64
	DefaultSeedBalance = 1_000_000
	DefaultPrefix      = "bench"
	DefaultHTTPTimeout = 60 * time.Second
)

// orDefault sets *v to def when *v is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

func (c Config) withDefaults() Config {
	if c.Mix.total() == 0 {
		c.Mix = DefaultMix()
	}
	if len(c.Accounts) == 0 {
		c.Accounts = []int{1, 10000}
	}
	if len(c.Modes) == 0 {
		c.Modes = []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock}
		if c.Target != "" {
			c.Modes = []ledger.Mode{ledger.ModeOptimistic}
		}
	}
	if len(c.GroupCommit) == 0 {
		c.GroupCommit = []bool{true, false}
		if c.Target != "" {
			c.GroupCommit = []bool{true}
		}
	}
	orDefault(&c.Workers, DefaultWorkers)
	orDefault(&c.Duration, DefaultDuration)
	orDefault(&c.Partitions, DefaultPartitions)
	orDefault(&c.MaxBatch, DefaultMaxBatch)
	orDefault(&c.SeedBalance, DefaultSeedBalance)
	orDefault(&c.Prefix, DefaultPrefix)
	orDefault(&c.CheckSample, 100)
	orDefault(&c.CeilingDuration, 3*time.Second)
	orDefault(&c.CeilingConns, 64)
	orDefault(&c.HTTPTimeout, DefaultHTTPTimeout)
	orDefault(&c.Spread, SpreadRequest)
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// FieldError is an invalid field of a Config, HTTPConfig or RelayConfig: Field is its
// name (Target, Workers, ...), Reason what is wrong with its value ("must be positive").
type FieldError struct {
	Field  string
	Reason string
}

// Error returns "bench: <Field> <Reason>".
func (e *FieldError) Error() string { return "bench: " + e.Field + " " + e.Reason }

// invalid returns a *FieldError.
func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// checkTarget returns a *FieldError of field unless every comma-separated part of s is an
// http(s) base URL.
func checkTarget(field, s string) error {
	for _, t := range targets(s) {
		u, err := url.Parse(t)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid(field, "must be an http(s) base URL, got %q", t)
		}
	}
	return nil
}

// checkPrefix returns a *FieldError of Prefix unless p can start keys and account IDs.
func checkPrefix(p string) error {
	if err := ledger.ValidateID("prefix", p); err != nil {
		return invalid("Prefix", "is not a valid ID (%v)", err)
	}
	return nil
}

// How operations are spread over several Target replicas (Config.Spread).
const (
	SpreadRequest = "request"
	SpreadWorker  = "worker"
)

// withServer labels a Target run with the server's mode and group commit and places its
// accounts by the server's partition count, as the server's /metrics says
// (tally_ledger_info): the bench cannot change them, and a label that guessed would
// mislead. A value given in c (given: before defaults) that the server contradicts is an
// error. A serve without the metric leaves c as it is.
func (c Config) withServer(ctx context.Context, given Config, d *httpDriver) (Config, error) {
	s, found, err := d.serverLedger(ctx)
	if err != nil || !found {
		return c, err
	}
	switch {
	case len(given.Modes) > 0 && given.Modes[0] != s.mode:
		return c, s.contradicted("Modes", given.Modes[0])
	case len(given.GroupCommit) > 0 && given.GroupCommit[0] != s.groupCommit:
		return c, s.contradicted("GroupCommit", given.GroupCommit[0])
	case given.Partitions != 0 && given.Partitions != s.partitions:
		return c, s.contradicted("Partitions", given.Partitions)
	}
	c.Modes, c.GroupCommit, c.Partitions = []ledger.Mode{s.mode}, []bool{s.groupCommit}, s.partitions
	return c, nil
}

// Validate returns an error describing the first invalid field of c (after defaults): a
// *FieldError, or an error saying that neither Redis nor Target is given.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Target == "" && c.Redis == nil {
		return errors.New("bench: a Redis or a Target is required")
	}
	if c.Target != "" {
		if err := checkTarget("Target", c.Target); err != nil {
			return err
		}
		if len(c.Modes) != 1 || len(c.GroupCommit) != 1 {
			return invalid("Target", "cannot change the server's mode or group commit: give one mode and one group commit setting at most (they label the results)")
		}
	}
	for _, m := range c.Modes {
		if m != ledger.ModeOptimistic && m != ledger.ModeLock {
			return invalid("Modes", "has unknown mode %q (optimistic, lock)", m)
		}
		if m == ledger.ModeLock && c.Target == "" && c.Locker == nil {
			return invalid("Locker", "is required in lock mode")
		}
	}
	for _, n := range c.Accounts {
		if n < 1 {
			return invalid("Accounts", "must be positive, got %d", n)
		}
	}
	for k, w := range c.Mix.Weights {
		if w < 0 {
			return invalid("Mix", "weighs %s negative", Kind(k))
		}
	}
	switch {
	case c.Workers < 1:
		return invalid("Workers", "must be positive")
	case c.Duration < 0:
		return invalid("Duration", "must not be negative")
	case c.Ops < 0:
		return invalid("Ops", "must not be negative")
	case c.Partitions < 1:
		return invalid("Partitions", "must be positive")
	case c.MaxBatch < 1:
		return invalid("MaxBatch", "must be positive")
	case c.SeedBalance < 0:
		return invalid("SeedBalance", "must not be negative")
	case c.CeilingConns < 1:
		return invalid("CeilingConns", "must be positive")
	case c.HTTPTimeout < 0:
		return invalid("HTTPTimeout", "must not be negative")
	case c.Spread != SpreadRequest && c.Spread != SpreadWorker:
		return invalid("Spread", "must be %s or %s, got %q", SpreadRequest, SpreadWorker, c.Spread)
	}
	return checkPrefix(c.Prefix)
}

// newHTTPClient returns a keep-alive client for a running serve with room for conns
// concurrent requests, each bounded by timeout.
func newHTTPClient(conns int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * conns,
		MaxIdleConnsPerHost: 2 * conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// targets splits a comma-separated Target into base URLs without trailing slashes.
func targets(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimRight(strings.TrimSpace(t), "/"); t != "" {
			out = append(out, t)
		}
	}
	return out
}
