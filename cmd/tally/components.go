package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redisx"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// lockFlags choose the Redlock masters, how to connect to them, and lease timing.
type lockFlags struct {
	masters string
	conn    connFlags
	ttl     time.Duration
	wait    time.Duration
}

func (f *lockFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.masters, "lock-redis", "", "comma-separated independent Redis masters for Redlock leases (default: the data Redis as the single master)")
	f.conn.register(fs, "lock-redis", "the --lock-redis masters")
	fs.DurationVar(&f.ttl, "lock-ttl", lock.DefaultTTL, "lease validity; renewed while work runs")
	fs.DurationVar(&f.wait, "lock-wait", lock.DefaultWaitTimeout, "longest wait for a lease before 503 lock_unavailable")
}

// masterOptions returns the go-redis options of each --lock-redis master (none without
// the flag), with the --lock-redis-* credentials and TLS settings. It returns an error for
// those settings without --lock-redis, and for unusable TLS settings.
func (f *lockFlags) masterOptions() ([]*redis.Options, error) {
	addrs := splitList(f.masters)
	if len(addrs) == 0 && f.conn.o.Set() {
		return nil, errors.New("--lock-redis-user, --lock-redis-password and --lock-redis-tls* need --lock-redis (without it the leases live on the data Redis, reached with the --redis-* settings)")
	}
	tlsCfg, err := f.conn.tlsConfig()
	if err != nil {
		return nil, err
	}
	out := make([]*redis.Options, len(addrs))
	for i, a := range addrs {
		out[i] = lock.MasterOptions(a)
		f.conn.o.Apply(out[i], tlsCfg)
	}
	return out, nil
}

// checkMasters pings every --lock-redis master once at start. Refused credentials or a
// failed TLS handshake are errors (the configuration is wrong: no lease would ever be
// granted); a master that does not answer is only logged, since Redlock works with a
// majority and the master may come back.
func (f *lockFlags) checkMasters(ctx context.Context, log *slog.Logger) error {
	opts, err := f.masterOptions()
	if err != nil {
		return err
	}
	if len(opts) > 0 {
		f.conn.warnArgv(log)
	}
	for _, o := range opts {
		c := redis.NewClient(o)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.Ping(pctx).Err()
		cancel()
		c.Close()
		switch {
		case err == nil:
		case redisx.ConfigError(err):
			return f.conn.connectError("lock master "+o.Addr, err)
		default:
			log.Warn("lock master does not answer; leases need a majority of the masters", "master", o.Addr, "err", err)
		}
	}
	return nil
}

// newLocker returns a Locker over the --lock-redis masters, or over data when none are
// given. The returned close function closes the Locker, then the clients it created.
func (f *lockFlags) newLocker(data redis.UniversalClient, log *slog.Logger, hooks lock.Hooks, ttl time.Duration) (*lock.Locker, func(), error) {
	var clients []redis.UniversalClient
	closeAll := func() {
		for _, c := range clients {
			if c != data {
				c.Close()
			}
		}
	}
	opts, err := f.masterOptions()
	if err != nil {
		return nil, nil, err
	}
	if len(opts) > 0 {
		for _, o := range opts {
			clients = append(clients, redis.NewClient(o))
		}
	} else {
		clients = []redis.UniversalClient{data}
	}
	l, err := lock.New(clients, lock.Config{TTL: ttl, WaitTimeout: f.wait, Hooks: hooks, Logger: log})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return l, func() { _ = l.Close(); closeAll() }, nil
}

// relayFlags configure the outbox relay and its sinks.
type relayFlags struct {
	webhook         string
	webhookSecret   string
	webhookTypes    string
	webhookPrefix   string
	webhookSubsList webhookSubsFlag
	plan            *sinkPlan // set by checkSinks
	stream          string
	streamMaxLen    int64
	streamTypes     string
	streamPrefix    string
	projector       bool
	group           string
	maxAttempts     int
	retention       time.Duration
	leaseTTL        time.Duration
	linger          time.Duration
	deadLetterMax   int64
}

func (f *relayFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.webhook, "webhook", "", "deliver events to this URL (JSON, signed with Tally-Signature: sha256=<hex HMAC>)")
	fs.StringVar(&f.webhookSecret, "webhook-secret", "", "HMAC-SHA256 secret for --webhook (required with it)")
	fs.StringVar(&f.webhookTypes, "webhook-types", "", "comma-separated event types --webhook receives (default: all); the others are acknowledged for it and still reach every other sink")
	fs.StringVar(&f.webhookPrefix, "webhook-account-prefix", "", "--webhook receives only events of accounts whose ID starts with this (default: all)")
	fs.Var(&f.webhookSubsList, "webhook-sub", "another webhook subscription, repeatable: url=URL,secret-env=NAME[,types=A|B][,prefix=P] (the secret is read from the environment variable NAME; in "+envVar("webhook-sub")+" separate several with spaces)")
	fs.StringVar(&f.stream, "sink-stream", "", "also append every event (deduplicated) to this Redis stream key")
	fs.Int64Var(&f.streamMaxLen, "sink-stream-maxlen", outbox.DefaultStreamSinkMaxLen, "keep about this many entries in the --sink-stream stream; older ones are trimmed whether read or not (negative: no bound)")
	fs.StringVar(&f.streamTypes, "sink-stream-types", "", "comma-separated event types --sink-stream receives (default: all)")
	fs.StringVar(&f.streamPrefix, "sink-stream-account-prefix", "", "--sink-stream receives only events of accounts whose ID starts with this (default: all)")
	fs.BoolVar(&f.projector, "projector", true, "maintain the built-in read model (per-account summaries and totals)")
	fs.StringVar(&f.group, "relay-group", outbox.DefaultGroup, "consumer group: relays with the same group share partitions")
	fs.IntVar(&f.maxAttempts, "relay-max-attempts", outbox.DefaultMaxAttempts, "failed deliveries of one event before it moves to the dead-letter stream")
	fs.DurationVar(&f.retention, "outbox-retention", outbox.DefaultRetention, "how long acknowledged outbox entries are kept")
	fs.DurationVar(&f.leaseTTL, "relay-lease-ttl", 10*time.Second, "partition lease validity: how long a dead relay's partitions wait for a new owner")
	fs.DurationVar(&f.linger, "relay-linger", outbox.DefaultLinger, "pause between the batches of a busy partition, so that more events go out per batch (0: none)")
	fs.Int64Var(&f.deadLetterMax, "dead-letter-max", outbox.DefaultDeadLetterMaxLen, "keep about this many dead letters per partition; the oldest are dropped beyond (logged, counted in tally_outbox_dead_letters_dropped_total; negative: no bound)")
}

// newAdmin returns the outbox Admin of the flags' relay group, which serves GET /v1/relay
// and the dead-letter replay on any serve and exports the partitions' backlog to reg.
func (f *relayFlags) newAdmin(rdb redis.UniversalClient, prefix string, partitions int, reg prometheus.Registerer) (*outbox.Admin, error) {
	return outbox.NewAdmin(rdb, outbox.AdminConfig{Prefix: prefix, Partitions: partitions, Group: f.group, Registerer: reg})
}

// newRelay builds the relay with the sinks the flags ask for. rdb should be a client of
// the relay's own (see relayClient).
//
// The ledger's transfer process manager (tm) comes first, so that a transfer a crash left
// half done is finished before the other sinks see the rest of the batch.
func (f *relayFlags) newRelay(rdb redis.UniversalClient, leaser outbox.Leaser, prefix string, partitions int, log *slog.Logger, reg prometheus.Registerer, tm outbox.Sink) (*outbox.Relay, error) {
	sinks := []outbox.Sink{tm}
	if f.projector {
		p, err := ledger.NewProjector(rdb, ledger.ProjectorConfig{Prefix: prefix, Partitions: partitions})
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, p)
	}
	if f.plan == nil { // serve and relay checked at start-up; anyone else now
		if err := f.checkSinks(); err != nil {
			return nil, err
		}
	}
	if f.stream != "" {
		s, err := outbox.NewStreamSink(outbox.StreamSinkConfig{Client: rdb, Stream: f.stream, MaxLen: f.streamMaxLen})
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, outbox.Filtered(s, f.plan.stream))
	}
	for _, sub := range f.plan.webhooks {
		w, err := outbox.NewWebhookSink(sub.config())
		if err != nil {
			return nil, err
		}
		// An event a subscription leaves out is acknowledged for it (never retried or
		// dead-lettered on its account) and still reaches every other sink.
		sinks = append(sinks, outbox.Filtered(w, sub.filter))
	}
	return outbox.NewRelay(rdb, leaser, outbox.Config{
		Prefix: prefix, Partitions: partitions, Group: f.group, Sinks: sinks,
		MaxAttempts: f.maxAttempts, Retention: f.retention, DeadLetterMaxLen: f.deadLetterMax,
		// A dead relay's partitions are free once both its leases and its owner records
		// expired: give them the same lifetime (the default BlockTimeout follows it).
		OwnerTTL: f.leaseTTL,
		Linger:   f.lingerConfig(),
		Logger:   log, Registerer: reg,
	})
}

// checkLinger refuses a negative --relay-linger (serve and relay check it at start-up).
func (f *relayFlags) checkLinger() error {
	if f.linger < 0 {
		return errors.New("--relay-linger must not be negative (0: no pause)")
	}
	return nil
}

// lingerConfig is --relay-linger as outbox.Config.Linger, where 0 is the default: no pause
// is a negative Linger.
func (f *relayFlags) lingerConfig() time.Duration {
	if f.linger == 0 {
		return -1
	}
	return f.linger
}

// relayClient returns a client for the relay with a connection pool of its own: an owner
// of an idle partition waits for new entries inside Redis (XREADGROUP BLOCK), holding one
// connection per idle partition, which must not starve the API's requests. It connects
// like rdb (address or dialer, credentials, TLS, context deadlines) with a pool of at least
// partitions+16 connections (per node on a Cluster). The returned function closes it.
func relayClient(rdb redis.UniversalClient, partitions int) (redis.UniversalClient, func()) {
	return redisx.Pooled(rdb, max(redisx.PoolSize(rdb), partitions+16))
}

// relayAdmin adapts the outbox Admin to the handlers' Relay interface.
type relayAdmin struct{ a *outbox.Admin }

func (a relayAdmin) Status(ctx context.Context) ([]handlers.PartitionStatus, error) {
	st, err := a.a.Status(ctx)
	if err != nil {
		return nil, storeError(ctx, err)
	}
	out := make([]handlers.PartitionStatus, len(st))
	for i, s := range st {
		// A conversion, not a copy field by field: a field added to one type and not the
		// other breaks the build instead of vanishing from GET /v1/relay.
		out[i] = handlers.PartitionStatus(s)
	}
	return out, nil
}

func (a relayAdmin) ReplayDeadLetters(ctx context.Context) (int, error) {
	n, err := a.a.ReplayDeadLetters(ctx)
	if err != nil {
		return n, storeError(ctx, err)
	}
	return n, nil
}

// storeError classifies a Redis failure of a non-ledger component the way the ledger does:
// an outage (ledger.Transient) is ledger.ErrStoreUnavailable (503), anything else a bug,
// ledger.ErrInternal (500, logged).
func storeError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if ledger.Transient(err) {
		return fmt.Errorf("%w: %w", ledger.ErrStoreUnavailable, err)
	}
	return fmt.Errorf("%w: %w", ledger.ErrInternal, err)
}

// newMetrics returns a registry with Go and process collectors and the lock's metrics, and
// the lock hooks that feed them.
//
// The lock metrics carry a lease label: "account" for the ledger's account leases (lock
// mode), "partition" for the relays' partition leases. The two mean different things: a
// relay that tries a partition another relay owns fails to acquire it every time it looks,
// which is normal, while a failed account lease is a request answered 503.
func newMetrics() (*prometheus.Registry, lock.Hooks, error) {
	reg := prometheus.NewRegistry()
	lease := []string{"lease"}
	wait := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "tally_lock_wait_seconds", Help: "Time spent waiting for leases that were acquired (local queue plus Redis attempts).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, lease)
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, lease)
	}
	acquireFailed := counter("tally_lock_acquire_failures_total", "Lease acquisitions that gave up (for partition leases: tries while another relay owns the partition).")
	renewed := counter("tally_lock_renewals_total", "Lease renewals.")
	lost := counter("tally_lock_lost_total", "Leases lost while work ran.")
	for _, l := range []string{leaseAccount, leasePartition} {
		wait.WithLabelValues(l)
		acquireFailed.WithLabelValues(l)
		renewed.WithLabelValues(l)
		lost.WithLabelValues(l)
	}
	if err := register(reg, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		wait, acquireFailed, renewed, lost); err != nil {
		return nil, lock.Hooks{}, err
	}
	hooks := lock.Hooks{
		Acquired:      func(key string, d time.Duration) { wait.WithLabelValues(leaseKind(key)).Observe(d.Seconds()) },
		AcquireFailed: func(key string, _ error) { acquireFailed.WithLabelValues(leaseKind(key)).Inc() },
		Renewed:       func(key string) { renewed.WithLabelValues(leaseKind(key)).Inc() },
		Lost:          func(key string) { lost.WithLabelValues(leaseKind(key)).Inc() },
	}
	return reg, hooks, nil
}

// Values of the lock metrics' lease label.
const (
	leaseAccount   = "account"
	leasePartition = "partition"
)

// leaseKind returns the lease label of a lock key: the ledger's account leases are
// "acct:<id>", every other lease is a relay's partition lease.
func leaseKind(key string) string {
	if strings.HasPrefix(key, "acct:") {
		return leaseAccount
	}
	return leasePartition
}

// registerLedgerMetrics exports the ledger's write-path counters.
func registerLedgerMetrics(reg prometheus.Registerer, l *ledger.Ledger) error {
	stat := func(name, help string, get func(ledger.Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(get(l.Stats())) })
	}
	return register(reg,
		stat("tally_ledger_commits_total", "Commit script calls that committed.", func(s ledger.Stats) int64 { return s.Commits }),
		stat("tally_ledger_operations_total", "Requests committed.", func(s ledger.Stats) int64 { return s.Operations }),
		stat("tally_ledger_version_conflicts_total", "Commits rejected by the version check.", func(s ledger.Stats) int64 { return s.Conflicts }),
		stat("tally_ledger_retries_total", "Attempts repeated after a conflict or store error.", func(s ledger.Stats) int64 { return s.Retries }),
		stat("tally_ledger_idempotent_replays_total", "Requests answered from an idempotency record.", func(s ledger.Stats) int64 { return s.Replays }),
		stat("tally_ledger_lock_failures_total", "Attempts that could not take or keep the lease.", func(s ledger.Stats) int64 { return s.LockFailures }),
		stat("tally_ledger_overloaded_total", "Requests refused with 503 overloaded: their account already had --max-queue requests in this process.", func(s ledger.Stats) int64 { return s.Overloaded }),
		stat("tally_ledger_joined_total", "Requests that joined a group commit already under way (once its leases were held, or before its retry after a conflict).", func(s ledger.Stats) int64 { return s.Joined }),
		stat("tally_ledger_snapshot_cache_hits_total", "Attempts decided on snapshots this process's own commits left behind, without reading a snapshot.", func(s ledger.Stats) int64 { return s.SnapshotHits }),
		stat("tally_ledger_stale_snapshots_total", "Version conflicts of attempts decided on cached snapshots: another process wrote the account since; decided again at once on a fresh read.", func(s ledger.Stats) int64 { return s.StaleSnapshots }),
		stat("tally_ledger_transfers_stuck_total", "Cross-partition transfers the sweep found pending longer than --sweep-stuck-after (and finished).", func(s ledger.Stats) int64 { return s.TransfersStuck }),
	)
}

func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	return nil
}

// metricsHandler serves reg in the Prometheus text format.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
