// Package ledger holds Tally's money model: accounts, commands decided as pure functions into
// events, and the Redis store that commits events, the account snapshot, the partition outbox
// and idempotency records in one atomic script guarded by a version check.
package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Mode selects how concurrent writers of one account are coordinated.
type Mode string

const (
	// ModeOptimistic takes no lock: a version conflict re-reads and retries with jittered
	// backoff, a bounded number of times, then fails with ErrVersionConflict.
	ModeOptimistic Mode = "optimistic"
	// ModeLock takes the account's lease (Config.Locker) around read, decide and commit. The
	// version check stays on as the fencing token.
	ModeLock Mode = "lock"
)

// Locker runs fn while holding the lease for key (package lock provides it). fn's context
// is cancelled when the lease is lost. Any error not returned by fn means the lease could
// not be taken or kept.
type Locker interface {
	Do(ctx context.Context, key string, fn func(ctx context.Context) error) error
}

// MultiLocker is a Locker that can run fn under the leases of several keys taken together
// (package lock's DoAll), without deadlock between callers that share keys. The ledger
// uses it for writes and group commits that touch several accounts.
type MultiLocker interface {
	Locker
	DoAll(ctx context.Context, keys []string, fn func(ctx context.Context) error) error
}

// DefaultSnapshotCache is Config.SnapshotCache's default.
const DefaultSnapshotCache = 16_384

// Config configures a Ledger. The zero value of every field but Locker has a usable default.
type Config struct {
	// Prefix starts every Redis key. Default "tally".
	Prefix string
	// Partitions is the number of partitions accounts hash into (P). It is recorded in Redis
	// on first start; Open refuses another value later. Default 16, at most 16384.
	Partitions int
	// Mode is ModeOptimistic (default) or ModeLock.
	Mode Mode
	// Locker provides account leases; required in ModeLock.
	Locker Locker
	// DisableGroupCommit turns off group commit: every request then reads,
	// decides and commits on its own (optimistic mode then relies on the version check alone).
	DisableGroupCommit bool
	// MaxBatch bounds how many waiting commands of one partition (any of its accounts) are
	// committed together. Default 64.
	MaxBatch int
	// MaxQueue bounds the requests of one account this process holds at once (waiting for
	// their group commit, or being committed). Beyond it a write fails at once with
	// ErrOverloaded and nothing is written. Default 10,000.
	MaxQueue int
	// BatchTimeout bounds one group commit, which runs on behalf of several requests and so
	// does not follow any single request's context. Default 10s.
	BatchTimeout time.Duration
	// MaxRetries bounds re-reads after a version conflict or an unreachable store.
	// Default 20.
	MaxRetries int
	// RetryBackoff is the base of the jittered exponential backoff between retries;
	// RetryBackoffMax caps it. Defaults 1ms and 50ms.
	RetryBackoff, RetryBackoffMax time.Duration
	// GroupRetryBackoff is the base of that backoff for a group commit. Default 100µs: a
	// group commit contends only with the same partition's leaders in other processes, not
	// with every request, and its conflict means another process's commit has landed, so a
	// short pause is enough (the backoff still doubles up to RetryBackoffMax). Without group
	// commit every request contends, and RetryBackoff spreads them.
	GroupRetryBackoff time.Duration
	// SnapshotCache is how many account snapshots the Ledger remembers from its own commits
	// (spread evenly over the partitions), so that the next batch on those accounts decides
	// without reading them: one round trip per batch instead of two. The commit checks every
	// version, so a snapshot another process moved on costs a skipped slice and a fresh
	// read (Stats.StaleSnapshots), never a wrong write. Default 16,384; -1 turns it off.
	SnapshotCache int
	// IdempotencyTTL is how long a client Idempotency-Key is remembered. Default 24h.
	IdempotencyTTL time.Duration
	// OperationTokenTTL is how long the internal record of a request without an
	// Idempotency-Key is kept; it only has to outlive the request's own retries. Default 2m.
	OperationTokenTTL time.Duration
	// Clock returns the current time. Default time.Now.
	Clock func() time.Time
	// Registerer, when set, receives the ledger's metrics (see docs/observability.md): commit
	// sizes, committed events and transfer and hold transitions, and the pending transfers
	// and holds per partition read from Redis at scrape time. Nil means no metrics.
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = defaultPartitions
	}
	if c.Mode == "" {
		c.Mode = ModeOptimistic
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 64
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = 10_000
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = 10 * time.Second
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 20
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = time.Millisecond
	}
	if c.RetryBackoffMax == 0 {
		c.RetryBackoffMax = 50 * time.Millisecond
	}
	if c.GroupRetryBackoff == 0 {
		c.GroupRetryBackoff = min(100*time.Microsecond, c.RetryBackoffMax)
	}
	if c.SnapshotCache == 0 {
		c.SnapshotCache = DefaultSnapshotCache
	}
	if c.IdempotencyTTL == 0 {
		c.IdempotencyTTL = 24 * time.Hour
	}
	if c.OperationTokenTTL == 0 {
		c.OperationTokenTTL = 2 * time.Minute
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

// Validate returns an error describing the first invalid field of c (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Partitions < 1 || c.Partitions > 16384:
		return fmt.Errorf("ledger: partitions must be 1..16384, got %d", c.Partitions)
	case c.Mode != ModeOptimistic && c.Mode != ModeLock:
		return fmt.Errorf("ledger: mode must be %q or %q, got %q", ModeOptimistic, ModeLock, c.Mode)
	case c.Mode == ModeLock && c.Locker == nil:
		return errors.New("ledger: lock mode needs a Locker")
	case c.MaxBatch < 1 || c.MaxBatch > 1024:
		return fmt.Errorf("ledger: max batch must be 1..1024, got %d", c.MaxBatch)
	case c.MaxQueue < 1:
		return fmt.Errorf("ledger: max queue must be positive, got %d", c.MaxQueue)
	case c.SnapshotCache < -1:
		return fmt.Errorf("ledger: snapshot cache must be -1 (off) or positive, got %d", c.SnapshotCache)
	case c.MaxRetries < 1:
		return errors.New("ledger: max retries must be positive")
	case c.RetryBackoff < 0 || c.RetryBackoffMax < c.RetryBackoff || c.GroupRetryBackoff < 0 || c.RetryBackoffMax < c.GroupRetryBackoff:
		return errors.New("ledger: retry backoff must be 0 <= base <= max")
	case c.BatchTimeout < 0 || c.IdempotencyTTL < time.Second || c.OperationTokenTTL < time.Second:
		return errors.New("ledger: timeouts and TTLs must be positive (TTLs at least 1s)")
	}
	return nil
}

// Ledger executes commands against accounts stored in Redis. It is safe for concurrent use;
// several Ledgers (in one or many processes) may share the same Redis.
type Ledger struct {
	cfg       Config
	store     *store
	snaps     *snapCache // nil when off
	queue     groupQueue
	admission admission
	driving   driving
	stats     counters
	metrics   *metrics // nil without Config.Registerer

	// beforeCommit is a test hook: it runs between read and commit, with an account of the
	// batch.
	beforeCommit func(account string)
}

// Open checks cfg, records or verifies the partition count in Redis and returns a Ledger.
// It returns ErrPartitionMismatch when Redis already records another partition count, and
// an error wrapping ErrStoreUnavailable when Redis cannot be reached.
func Open(ctx context.Context, rdb redis.UniversalClient, cfg Config) (*Ledger, error) {
	l, err := New(rdb, cfg)
	if err != nil {
		return nil, err
	}
	if err := l.CheckPartitions(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// New checks cfg and returns a Ledger over rdb without talking to Redis; call
// CheckPartitions before the first write (Open does both). It returns an error for an
// invalid cfg, and the error of registering the metrics with cfg.Registerer.
func New(rdb redis.UniversalClient, cfg Config) (*Ledger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ks := keyspace{prefix: cfg.Prefix, partitions: cfg.Partitions}
	l := &Ledger{
		cfg:       cfg,
		store:     newStore(rdb, ks),
		snaps:     newSnapCache(cfg.Partitions, cfg.SnapshotCache),
		queue:     groupQueue{partitions: map[int]*partitionQueue{}},
		admission: admission{inflight: map[string]int{}},
		driving:   driving{ids: map[string]chan struct{}{}},
	}
	m, err := newMetrics(cfg.Registerer, l)
	if err != nil {
		return nil, err
	}
	l.metrics = m
	return l, nil
}

// CheckPartitions records the partition count in Redis on first start and otherwise
// verifies it. It returns ErrPartitionMismatch when Redis records another count, and an
// error wrapping ErrStoreUnavailable when Redis cannot be reached.
func (l *Ledger) CheckPartitions(ctx context.Context) error {
	meta := l.store.keys.meta()
	pipe := l.store.rdb.Pipeline()
	pipe.HSetNX(ctx, meta, "partitions", l.cfg.Partitions)
	get := pipe.HGet(ctx, meta, "partitions")
	if _, err := pipe.Exec(ctx); err != nil {
		return storeErr(ctx, err)
	}
	recorded, err := get.Int()
	if err != nil {
		return storeErr(ctx, err)
	}
	if recorded != l.cfg.Partitions {
		return fmt.Errorf("%w: Redis records %d partitions under %q, this process was started with %d; start with --partitions %d",
			ErrPartitionMismatch, recorded, meta, l.cfg.Partitions, recorded)
	}
	return nil
}

// Partitions returns the partition count.
func (l *Ledger) Partitions() int { return l.cfg.Partitions }

// Partition returns the partition an account belongs to.
func (l *Ledger) Partition(account string) int { return l.store.keys.partition(account) }

// Prefix returns the key prefix.
func (l *Ledger) Prefix() string { return l.cfg.Prefix }

// Mode returns the concurrency mode.
func (l *Ledger) Mode() Mode { return l.cfg.Mode }

// Ping returns nil when Redis answers.
func (l *Ledger) Ping(ctx context.Context) error {
	if err := l.store.rdb.Ping(ctx).Err(); err != nil {
		return storeErr(ctx, err)
	}
	return nil
}

// WriteOptions carries per-request options of a write.
type WriteOptions struct {
	// IdempotencyKey, when set, makes a retry of the same command return the first
	// response without applying anything; another command with the same key (on the same
	// account) fails with ErrIdempotencyKeyReused.
	IdempotencyKey string
}

// Receipt is the result of a write: the response body (JSON), byte for byte the same when
// an idempotent retry returns it again.
type Receipt struct {
	Body     []byte
	Replayed bool // true when Body is the stored response of an earlier request
}

// OpenAccount opens an account. It returns the account as JSON, ErrAccountExists, or an
// error wrapping ErrInvalid.
func (l *Ledger) OpenAccount(ctx context.Context, cmd OpenAccount, opts WriteOptions) (Receipt, error) {
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// Deposit adds money to an account. It returns an OperationResult as JSON,
// ErrAccountNotFound, ErrOverflow, or an error wrapping ErrInvalid.
func (l *Ledger) Deposit(ctx context.Context, cmd Deposit, opts WriteOptions) (Receipt, error) {
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// Withdraw takes money out of an account. It returns an OperationResult as JSON,
// ErrInsufficientFunds, ErrAccountNotFound, ErrOverflow, or an error wrapping ErrInvalid.
func (l *Ledger) Withdraw(ctx context.Context, cmd Withdraw, opts WriteOptions) (Receipt, error) {
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// CloseAccount closes an account. It returns the account as JSON, ErrAccountNotEmpty
// unless every posted and held amount is zero, ErrAccountNotFound, ErrAccountClosed, or an
// error wrapping ErrInvalid. Later writes to it fail with ErrAccountClosed, and transfers
// on their way to it are refunded.
func (l *Ledger) CloseAccount(ctx context.Context, id string, opts WriteOptions) (Receipt, error) {
	cmd := CloseAccount{Account: id}
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// Account returns the snapshot of an account, ErrAccountNotFound, or an error wrapping
// ErrInvalid for a malformed ID.
func (l *Ledger) Account(ctx context.Context, id string) (*Account, error) {
	if err := ValidateID("account", id); err != nil {
		return nil, err
	}
	acc, err := l.store.account(ctx, id, l.cfg.Clock())
	if err != nil {
		return nil, err
	}
	if !acc.exists() {
		return nil, ErrAccountNotFound
	}
	return acc, nil
}

// MaxEventsPage bounds the events one Events call returns.
const MaxEventsPage = 1000

// Events returns up to limit (1..MaxEventsPage) events of an account with versions above
// after, and the version to pass as after for the next page (0 when there is none). It
// returns ErrAccountNotFound or an error wrapping ErrInvalid.
func (l *Ledger) Events(ctx context.Context, id string, after int64, limit int) ([]Event, int64, error) {
	if limit < 1 || limit > MaxEventsPage {
		return nil, 0, invalidf("limit must be 1..%d", MaxEventsPage)
	}
	if after < 0 {
		return nil, 0, invalidf("after must be a non-negative version")
	}
	if err := ValidateID("account", id); err != nil {
		return nil, 0, err
	}
	exists, events, more, err := l.store.page(ctx, id, after, limit)
	if err != nil {
		return nil, 0, err
	}
	if !exists {
		return nil, 0, ErrAccountNotFound
	}
	var next int64
	if more {
		next = events[len(events)-1].Version
	}
	return events, next, nil
}

// Replay rebuilds an account's snapshot from its whole event stream. It returns
// ErrAccountNotFound, or an error when the stream has a gap or an undecodable event.
func (l *Ledger) Replay(ctx context.Context, id string) (*Account, error) {
	return l.replayAt(ctx, id, l.cfg.Clock(), nil)
}

// badEventError is replayAt's error for an event that does not apply (or that visit
// refused), as opposed to a failure to read the stream.
type badEventError struct{ err error }

func (e *badEventError) Error() string { return e.err.Error() }
func (e *badEventError) Unwrap() error { return e.err }

// replayAt replays an account and settles its balances for now, handing every event to
// visit (when not nil) after it applied. An event that does not apply, or that visit
// refuses, ends the replay with a *badEventError.
func (l *Ledger) replayAt(ctx context.Context, id string, now time.Time, visit func(Event) error) (*Account, error) {
	acc, err := l.replay(ctx, id, 0, visit)
	if err != nil {
		return nil, err
	}
	if !acc.exists() {
		return nil, ErrAccountNotFound
	}
	acc.settle(now)
	return acc, nil
}

// replay applies an account's events up to version until (0: all of them) and returns it,
// balances not settled, handing every event to visit (when not nil) after it applied. An
// event that does not apply, or that visit refuses, ends the replay with a *badEventError.
func (l *Ledger) replay(ctx context.Context, id string, until int64, visit func(Event) error) (*Account, error) {
	acc := &Account{ID: id, Balances: map[string]Balance{}}
	limit := MaxEventsPage
	for {
		if until > 0 {
			limit = int(min(until-acc.Version, MaxEventsPage))
		}
		_, events, more, err := l.store.page(ctx, id, acc.Version, limit)
		if err != nil {
			return nil, err
		}
		for _, e := range events {
			err := acc.apply(e)
			if err == nil && visit != nil {
				err = visit(e)
			}
			if err != nil {
				return nil, &badEventError{err}
			}
		}
		if !more || (until > 0 && acc.Version >= until) {
			return acc, nil
		}
	}
}

// Stats are cumulative counters of a Ledger's write path.
type Stats struct {
	Commits      int64 // script calls that committed
	Operations   int64 // requests committed (>= Commits with group commit)
	Conflicts    int64 // commits rejected by the version check (or a record race), StaleSnapshots included
	Retries      int64 // attempts repeated after a conflict or store error
	Replays      int64 // requests answered from an idempotency record
	LockFailures int64 // attempts that could not take or keep the lease
	Overloaded   int64 // requests refused because their account's queue was full
	// Joined counts requests that joined a group commit already under way: once its leases
	// were held (lock mode) or before its retry after a conflict (optimistic mode).
	Joined int64
	// SnapshotHits counts attempts that decided on the snapshot cache without reading a
	// snapshot (Config.SnapshotCache; idempotency and hold records are still read, in one
	// round trip, when the attempt has some); StaleSnapshots the conflicts among them (counted in
	// Conflicts too) where every request sent back was decided on a cached snapshot: another
	// process wrote the account since this one cached it (or while it decided). They are
	// decided again at once on a fresh read, without a backoff or a retry.
	SnapshotHits, StaleSnapshots int64
	// TransfersStuck counts cross-partition transfers the sweep found pending for longer
	// than SweeperConfig.StuckAfter (each time it found one).
	TransfersStuck int64
}

type counters struct {
	commits, operations, conflicts, retries, replays, lockFailures, overloaded, transfersStuck, joined atomic.Int64
	// prereads counts attempts decided on snapshots their callers read (request.pre),
	// mixedPrereads those of them that also read for other requests of their batch, and
	// stalePrereads those a version or record check sent back (tests read them).
	prereads, mixedPrereads, stalePrereads atomic.Int64
	// cached counts attempts whose accounts were all in the snapshot cache (no snapshot
	// read), stale those sent back because a cached snapshot was out of date.
	cached, stale atomic.Int64
}

// Stats returns a copy of the counters.
func (l *Ledger) Stats() Stats {
	return Stats{
		Commits: l.stats.commits.Load(), Operations: l.stats.operations.Load(),
		Conflicts: l.stats.conflicts.Load(), Retries: l.stats.retries.Load(),
		Replays: l.stats.replays.Load(), LockFailures: l.stats.lockFailures.Load(),
		Overloaded: l.stats.overloaded.Load(), TransfersStuck: l.stats.transfersStuck.Load(),
		Joined:       l.stats.joined.Load(),
		SnapshotHits: l.stats.cached.Load(), StaleSnapshots: l.stats.stale.Load(),
	}
}

// fingerprint identifies a command so that an idempotency key can tell a retry (same
// fingerprint) from a reuse with another request.
func fingerprint(cmd any) string {
	raw, _ := json.Marshal(cmd) // commands are plain structs of strings, ints and maps
	sum := sha256.Sum256(append([]byte(fmt.Sprintf("%T:", cmd)), raw...))
	return hex.EncodeToString(sum[:])
}

// groupQueue holds, per partition, the requests waiting for the partition's current leader.
type groupQueue struct {
	mu         sync.Mutex
	partitions map[int]*partitionQueue
}

type partitionQueue struct {
	waiting []*request
}

// admission counts, per account, the requests this process holds (Config.MaxQueue).
type admission struct {
	mu       sync.Mutex
	inflight map[string]int
}
