package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/backoff"
)

// Leaser grants an exclusive, renewed lease on a key. It is the subset of package lock's
// *lock.Locker that the relay needs (outbox does not import lock; cmd wires it).
//
// TryDo makes one attempt to acquire the lease for key, without waiting for it; while it
// holds the lease it runs fn, renews the lease, cancels fn's ctx at once when the lease is
// lost and releases it when fn returns. It returns fn's error, or the acquisition error.
//
// The relay tells acquisition errors apart by a method Busy() bool found with errors.As
// (*lock.NotAcquiredError has it): Busy() true means the key is held by another holder,
// which is normal between relays and logged at debug level; any other acquisition error
// (lock masters down or slow) is an outage and is logged at warn level.
type Leaser interface {
	TryDo(ctx context.Context, key string, fn func(ctx context.Context) error) error
}

// Defaults applied to zero Config fields.
const (
	DefaultPrefix           = "tally"
	DefaultPartitions       = 16
	DefaultGroup            = "relay"
	DefaultBatchSize        = 256
	DefaultPollInterval     = 50 * time.Millisecond
	DefaultLinger           = 10 * time.Millisecond
	DefaultBlockTimeout     = time.Second
	DefaultMaxAttempts      = 10
	DefaultRetryBackoff     = 100 * time.Millisecond
	DefaultMaxRetryBackoff  = 10 * time.Second
	DefaultLeaseRetry       = time.Second
	DefaultOwnerTTL         = 10 * time.Second
	DefaultRetention        = 24 * time.Hour
	DefaultTrimInterval     = time.Minute
	DefaultDeadLetterMaxLen = 10_000
)

// Config configures a Relay. Zero fields take the documented defaults.
type Config struct {
	// Prefix is the first component of every key (see StreamKey). Default "tally".
	Prefix string
	// Partitions is the number of outbox partitions P; the relay serves 0..P-1.
	// Default 16. It must match the ledger's partition count.
	Partitions int
	// Group is the consumer group the relay reads with. Relays with the same group share
	// the partitions (one owner each); a relay with another group delivers every entry
	// again, independently (for example to rebuild a read model). Default "relay".
	Group string
	// Owner identifies this relay in leases, consumer names and status. It must be unique
	// among running relays. Default "<hostname>-<pid>-<random>".
	Owner string
	// Sinks receive every entry, in order: each batch goes to Sinks[0], then Sinks[1], ...
	// An entry is acknowledged only after every sink accepted it. Required.
	Sinks []Sink
	// BatchSize is the most entries read (XREADGROUP COUNT) and delivered at once.
	// Default 256.
	BatchSize int
	// PollInterval is how long an owner waits after a read found no new entries while its
	// partition is busy, so that entries arriving meanwhile go out as one batch.
	// Default 50ms.
	PollInterval time.Duration
	// Linger is the pause between batches while a partition is busy: after delivering a
	// batch of fewer than BatchSize entries the owner waits Linger before reading again, so
	// that the entries written meanwhile go out as one batch. Larger batches cost fewer
	// round trips and script calls per entry (the relay shares Redis and CPU with the
	// writes it delivers); an entry waits at most Linger more. A full batch is followed by
	// the next read at once, and the first entry after a quiet spell is delivered at once.
	// Default 10ms; negative: no pause.
	Linger time.Duration
	// BlockTimeout bounds how long an owner waits inside Redis (XREADGROUP BLOCK) for new
	// entries once two reads in a row found none: an idle partition costs one command per
	// BlockTimeout, and the first entry after a quiet spell is delivered at once. Entries
	// such a read returns after the lease was lost are not delivered; they stay pending
	// and the partition's next owner takes them over. A blocked read holds one connection
	// of the client, stopping waits for it, and it must end before another relay can take
	// the lease: keep BlockTimeout well below the lease's safety margin (package lock:
	// TTL/4). Default min(1s, OwnerTTL/8), half that margin when OwnerTTL is the lease TTL.
	BlockTimeout time.Duration
	// MaxAttempts is the number of failed deliveries of one entry after which it is moved
	// to the dead-letter stream. Failures are counted in Redis, so the count survives a
	// change of owner. Default 10.
	MaxAttempts int
	// RetryBackoff is the delay after an entry's first failed delivery; it doubles with
	// every further failure up to MaxRetryBackoff, and each delay is up to 20% shorter at
	// random (so that retries of many entries spread out).
	// Defaults 100ms and 10s.
	RetryBackoff, MaxRetryBackoff time.Duration
	// LeaseRetry is how often (±20%) a relay that owns fewer partitions than its share
	// looks at each partition it does not own. It makes a single lease attempt only when
	// the partition has no live owner record, so relays do not contend for partitions that
	// are served. Doubled, it is also the pause after handing a partition over to
	// rebalance. Default 1s.
	LeaseRetry time.Duration
	// OwnerTTL is the lifetime of an owner record, which the owner refreshes every
	// OwnerTTL/3. A partition whose owner died is taken over once both its lease and its
	// owner record expired, so set OwnerTTL to the lease TTL. Relays also heartbeat into
	// the group's member set every OwnerTTL/6, with a lifetime of OwnerTTL/2, so a dead
	// relay no longer counts when partitions are balanced by the time its partitions come
	// free. Default 10s.
	OwnerTTL time.Duration
	// Retention is how long acknowledged entries stay in the outbox stream; trimming never
	// removes an entry that any consumer group has not acknowledged, whatever Retention
	// says. Zero means the default 24h; a negative value keeps nothing beyond what is
	// unacknowledged.
	Retention time.Duration
	// TrimInterval is how often an owner trims its partition. Default 1m; negative
	// disables trimming.
	TrimInterval time.Duration
	// DeadLetterMaxLen bounds each partition's dead-letter stream to about this many
	// entries (XADD MAXLEN ~, so a little more may be kept). When a new dead letter finds
	// the stream full, the oldest are dropped: logged at warn and counted in
	// tally_outbox_dead_letters_dropped_total. Default 10,000; negative: no bound.
	DeadLetterMaxLen int64
	// Logger receives the relay's own reports (ownership changes, failed deliveries, dead
	// letters). Nil discards.
	Logger *slog.Logger
	// Clock returns the current time. Nil means time.Now.
	Clock func() time.Time
	// Registerer receives the relay's Prometheus counters and its owned gauge. Nil means
	// no metrics. Partition state (backlog, age) comes from an Admin's collector.
	Registerer prometheus.Registerer
}

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("outbox: invalid config")

// adminConfig returns the AdminConfig of the relay's group (without a Registerer: the
// relay's own collectors are its counters, see Registerer).
func (c Config) adminConfig() AdminConfig {
	return AdminConfig{Prefix: c.Prefix, Partitions: c.Partitions, Group: c.Group, Clock: c.Clock}
}

func (c Config) withDefaults() Config {
	a := c.adminConfig().withDefaults()
	c.Prefix, c.Partitions, c.Group, c.Clock = a.Prefix, a.Partitions, a.Group, a.Clock
	if c.Owner == "" {
		c.Owner = defaultOwner()
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.MaxRetryBackoff == 0 {
		c.MaxRetryBackoff = max(DefaultMaxRetryBackoff, c.RetryBackoff)
	}
	if c.LeaseRetry == 0 {
		c.LeaseRetry = DefaultLeaseRetry
	}
	if c.OwnerTTL == 0 {
		c.OwnerTTL = DefaultOwnerTTL
	}
	if c.BlockTimeout == 0 {
		c.BlockTimeout = min(DefaultBlockTimeout, c.OwnerTTL/8)
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.TrimInterval == 0 {
		c.TrimInterval = DefaultTrimInterval
	}
	if c.DeadLetterMaxLen == 0 {
		c.DeadLetterMaxLen = DefaultDeadLetterMaxLen
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate applies the defaults and reports the first invalid field, wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := c.adminConfig().Validate(); err != nil {
		return err
	}
	switch {
	case len(c.Sinks) == 0:
		return fmt.Errorf("%w: no Sinks", ErrInvalidConfig)
	case c.BatchSize < 1:
		return fmt.Errorf("%w: BatchSize %d < 1", ErrInvalidConfig, c.BatchSize)
	case c.MaxAttempts < 1:
		return fmt.Errorf("%w: MaxAttempts %d < 1", ErrInvalidConfig, c.MaxAttempts)
	case c.PollInterval < 0, c.RetryBackoff < 0, c.MaxRetryBackoff < c.RetryBackoff, c.LeaseRetry < 0:
		return fmt.Errorf("%w: negative interval or MaxRetryBackoff < RetryBackoff", ErrInvalidConfig)
	case c.BlockTimeout < time.Millisecond:
		return fmt.Errorf("%w: BlockTimeout %v < 1ms", ErrInvalidConfig, c.BlockTimeout)
	case c.OwnerTTL < 10*time.Millisecond:
		return fmt.Errorf("%w: OwnerTTL %v < 10ms", ErrInvalidConfig, c.OwnerTTL)
	}
	for i, s := range c.Sinks {
		if s == nil {
			return fmt.Errorf("%w: Sinks[%d] is nil", ErrInvalidConfig, i)
		}
	}
	return nil
}

func defaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Relay delivers the outbox streams of all partitions to its sinks. Create it with NewRelay
// and start it with Run. Its embedded Admin reports on and replays the dead letters of its
// group's partitions.
//
// Guarantees, per consumer group:
//   - One owner per partition: only the relay holding the partition's lease reads,
//     delivers, claims and dead-letters its entries; losing the lease cancels the work at
//     once (no sink is called after that). Entries are claimed from earlier owners only
//     under the lease, so a slow retry can never run concurrently with a claim.
//   - At-least-once, in stream order: an entry is acknowledged (XACK) only after every sink
//     accepted it; a new owner first redelivers what earlier owners left pending. Sinks see
//     each key's messages in sequence order, except that a redelivery may repeat a batch
//     and a replayed dead letter arrives after the later messages of its key. Entries that
//     reached a pending list without being delivered (a read whose reply a broken
//     connection lost, a read an earlier owner left blocked in Redis) are delivered before
//     anything newer: after every read the owner checks that nothing older is pending.
//     One window remains: an earlier owner that was paused past its lease and resumes may
//     call its sinks before it notices the loss (see docs/chaos.md).
//   - Poison isolation: when a batch fails, its messages are retried one by one; a message
//     that fails MaxAttempts times (or with a Permanent error) goes to the dead-letter
//     stream with the reason, and delivery continues with the next one, including later
//     messages of the same key (they are not held back). Dedup accepts the replayed dead
//     letter later because its sequence number is a recorded gap.
//   - Trimming never drops an entry that any group has not acknowledged.
type Relay struct {
	*Admin

	rdb    redis.UniversalClient
	leaser Leaser
	cfg    Config
	log    *slog.Logger
	m      *metrics

	owned atomic.Int64 // partitions this relay owns or is trying to take
	share atomic.Int64 // partitions this relay may own (ceil(P / live relays))

	leaseTrouble, redisTrouble trouble
}

// NewRelay returns a relay over rdb (standalone, cluster or embedded Redis) that takes
// partition leases from leaser. It returns an error wrapping ErrInvalidConfig when cfg is
// invalid, or when rdb or leaser is nil.
func NewRelay(rdb redis.UniversalClient, leaser Leaser, cfg Config) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil || leaser == nil {
		return nil, fmt.Errorf("%w: nil redis client or leaser", ErrInvalidConfig)
	}
	cfg = cfg.withDefaults()
	admin, err := NewAdmin(rdb, cfg.adminConfig())
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer, cfg.Group)
	if err != nil {
		return nil, err
	}
	r := &Relay{Admin: admin, rdb: rdb, leaser: leaser, cfg: cfg, log: cfg.Logger.With("owner", cfg.Owner, "group", cfg.Group), m: m}
	r.share.Store(int64(cfg.Partitions))
	return r, nil
}

// Owner returns the identity this relay records in leases, consumer names and status.
func (r *Relay) Owner() string { return r.cfg.Owner }

// Run serves partitions until ctx is done: for each partition without a live owner it
// tries to take the lease while it owns less than its share, and delivers while it holds
// it. Relays of one group balance the partitions between them (each takes at most
// ceil(P / live relays)). Everything Run starts has stopped when it returns; it returns
// nil after ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { r.heartbeat(ctx) })
	for p := 0; p < r.cfg.Partitions; p++ {
		wg.Go(func() { r.servePartition(ctx, p) })
	}
	wg.Wait()
	return nil
}

// heartbeat keeps this relay in the members set and derives its fair share of partitions.
// A member's entry lives OwnerTTL/2 and is refreshed every OwnerTTL/6, so a dead relay
// leaves the set before its owner records (OwnerTTL) expire and its partitions come free.
func (r *Relay) heartbeat(ctx context.Context) {
	key := r.membersKey()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = r.rdb.ZRem(cctx, key, r.cfg.Owner).Err()
	}()
	for {
		now := r.cfg.Clock()
		pipe := r.rdb.Pipeline()
		pipe.ZAdd(ctx, key, redis.Z{Score: float64(now.Add(r.cfg.OwnerTTL / 2).UnixMilli()), Member: r.cfg.Owner})
		pipe.ZRemRangeByScore(ctx, key, "-inf", fmt.Sprint(now.UnixMilli()))
		card := pipe.ZCard(ctx, key)
		pipe.Expire(ctx, key, 10*r.cfg.OwnerTTL)
		if _, err := pipe.Exec(ctx); err == nil {
			n := max(card.Val(), 1)
			r.share.Store(int64(math.Ceil(float64(r.cfg.Partitions) / float64(n))))
			r.redisTrouble.clear(r, "outbox relay: Redis answers again")
		} else if ctx.Err() == nil {
			r.redisTrouble.report(r, "outbox relay: heartbeat failed", "err", err)
		}
		if backoff.Wait(ctx, r.cfg.OwnerTTL/6) != nil {
			return
		}
	}
}

// errYield ends a partition's ownership voluntarily so that another relay can take it.
var errYield = errors.New("outbox: partition handed over for balance")

// servePartition looks after partition p until ctx is done: it tries to take it when it is
// free and serves it while this relay holds its lease.
func (r *Relay) servePartition(ctx context.Context, p int) {
	// Spread the first attempts a little so that relays started together interleave.
	if backoff.Wait(ctx, backoff.Jitter(r.cfg.LeaseRetry/10, spread)) != nil {
		return
	}
	for ctx.Err() == nil {
		if backoff.Wait(ctx, r.tryOwn(ctx, p)) != nil {
			return
		}
	}
}

// tryOwn takes partition p if this relay is below its share and p has no live owner, then
// serves it until the lease is lost, the partition is handed over or ctx is done. It makes
// at most one lease attempt and returns how long to wait before the next call.
func (r *Relay) tryOwn(ctx context.Context, p int) time.Duration {
	delay := backoff.Jitter(r.cfg.LeaseRetry, spread)
	// Reserve a slot of the share first, so that partitions found free at the same moment
	// do not take this relay past its share.
	cur := r.owned.Load()
	if cur >= r.share.Load() || !r.owned.CompareAndSwap(cur, cur+1) {
		return delay
	}
	yielded := false
	defer func() {
		if !yielded { // a yield has given its slot back already
			r.owned.Add(-1)
		}
	}()
	owner, err := r.rdb.Get(ctx, r.ownerKey(p)).Result()
	switch {
	case ctx.Err() != nil:
		return 0
	case errors.Is(err, redis.Nil), err == nil && owner == r.cfg.Owner:
		// No live owner: try.
	case err != nil:
		r.redisTrouble.report(r, "outbox relay: reading a partition's owner failed", "partition", p, "err", err)
		return delay
	default:
		return delay // served by a live relay
	}
	err = r.leaser.TryDo(ctx, r.leaseKey(p), func(lctx context.Context) error {
		err := r.own(lctx, p)
		yielded = errors.Is(err, errYield)
		return err
	})
	var oe *ownError
	switch {
	case ctx.Err() != nil:
		return 0
	case yielded:
		return 2 * r.cfg.LeaseRetry
	case errors.As(err, &oe):
		r.log.Warn("outbox relay: partition ownership ended", "partition", p, "err", err)
	case err == nil:
		r.leaseTrouble.clear(r, "outbox relay: leases can be taken again")
	case isBusy(err):
		r.leaseTrouble.clear(r, "outbox relay: leases can be taken again")
		r.log.Debug("outbox relay: partition lease held by another relay", "partition", p, "err", err)
	default:
		r.leaseTrouble.report(r, "outbox relay: lease attempt failed (lease service unavailable?)", "partition", p, "err", err)
	}
	return delay
}

// isBusy reports whether a Leaser's error says the key is held by another holder.
func isBusy(err error) bool {
	var b interface{ Busy() bool }
	return errors.As(err, &b) && b.Busy()
}

// ownError marks errors that happened while the relay owned a partition.
type ownError struct{ err error }

func (e *ownError) Error() string { return e.err.Error() }
func (e *ownError) Unwrap() error { return e.err }

// own runs while this relay holds partition p's lease; ctx is cancelled when it is lost. It
// returns errYield when it handed the partition over (its share slot already given back),
// nil when the lease was lost or ctx is done, and an *ownError otherwise.
func (r *Relay) own(ctx context.Context, p int) (err error) {
	defer func() {
		r.releaseOwner(ctx, p)
		r.m.setOwned(p, false)
		switch {
		case errors.Is(err, errYield):
		case ctx.Err() != nil:
			err = nil // lease lost or shutting down: nothing to report
		case err != nil:
			err = &ownError{err}
		}
		r.log.Info("outbox relay: partition released", "partition", p, "lease_lost_or_stopped", ctx.Err() != nil, "err", err)
	}()
	o := &partition{r: r, p: p, stream: StreamKey(r.cfg.Prefix, p)}
	if err := o.start(ctx); err != nil {
		return err
	}
	r.m.setOwned(p, true)
	r.log.Info("outbox relay: partition acquired", "partition", p)

	var wg sync.WaitGroup
	kctx, stop := context.WithCancel(ctx)
	wg.Go(func() { r.keepOwner(kctx, p) })
	defer func() { stop(); wg.Wait() }()
	return o.run(ctx)
}

// keepOwner refreshes partition p's owner record every OwnerTTL/3 until ctx is done, apart
// from delivery, so that a slow sink does not make the partition look abandoned.
func (r *Relay) keepOwner(ctx context.Context, p int) {
	for backoff.Wait(ctx, r.cfg.OwnerTTL/3) == nil {
		if err := r.recordOwner(ctx, p); err != nil && ctx.Err() == nil {
			r.redisTrouble.report(r, "outbox relay: refreshing a partition's owner record failed", "partition", p, "err", err)
		}
	}
}

// yield hands one partition over when this relay owns more than its share: it gives the
// slot back and reports true, and the caller must then stop owning the partition.
func (r *Relay) yield() bool {
	cur := r.owned.Load()
	return cur > r.share.Load() && r.owned.CompareAndSwap(cur, cur-1)
}

// recordOwner writes this relay's name into partition p's owner key with a TTL.
func (r *Relay) recordOwner(ctx context.Context, p int) error {
	return r.rdb.Set(ctx, r.ownerKey(p), r.cfg.Owner, r.cfg.OwnerTTL).Err()
}

var releaseOwnerScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// releaseOwner deletes partition p's owner key if it still names this relay.
func (r *Relay) releaseOwner(ctx context.Context, p int) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = releaseOwnerScript.Run(cctx, r.rdb, []string{r.ownerKey(p)}, r.cfg.Owner).Err()
}

// warnEvery bounds how often one kind of lasting trouble is logged at warn level.
const warnEvery = 30 * time.Second

// trouble logs a kind of failure that every partition loop may hit at once (the lease
// service or Redis unreachable): at warn level when it starts, then at most every
// warnEvery with the number of failures in between, and at info level when it ends.
type trouble struct {
	mu         sync.Mutex
	active     bool
	lastWarn   time.Time
	suppressed int
}

func (t *trouble) report(r *Relay, msg string, args ...any) {
	now := r.cfg.Clock()
	t.mu.Lock()
	warn := !t.active || now.Sub(t.lastWarn) >= warnEvery
	n := t.suppressed
	if warn {
		t.active, t.lastWarn, t.suppressed = true, now, 0
	} else {
		t.suppressed++
	}
	t.mu.Unlock()
	if warn {
		r.log.Warn(msg, append(args, "similar_failures_since_last_warning", n)...)
	} else {
		r.log.Debug(msg, args...)
	}
}

func (t *trouble) clear(r *Relay, msg string) {
	t.mu.Lock()
	was := t.active
	t.active = false
	t.mu.Unlock()
	if was {
		r.log.Info(msg)
	}
}

// spread is the relay's jitter: periodic work (lease attempts, trimming) runs every
// interval ±20%, and a retry waits up to 20% less than its backoff step.
const spread = 0.2
