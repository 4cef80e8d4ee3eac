package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Leaser grants an exclusive, renewed lease on a key. It is the subset of package lock's
// *lock.Locker that the relay needs (outbox does not import lock; cmd wires it).
//
// Do acquires the lease for key (waiting at most the leaser's configured wait or ctx's
// deadline; an error wrapping the leaser's "not acquired" sentinel when the key is busy),
// renews it while fn runs, cancels fn's ctx at once when the lease is lost and releases it
// when fn returns. It returns fn's error, or the acquisition error.
type Leaser interface {
	Do(ctx context.Context, key string, fn func(ctx context.Context) error) error
}

// Defaults applied to zero Config fields.
const (
	DefaultPrefix          = "tally"
	DefaultPartitions      = 16
	DefaultGroup           = "relay"
	DefaultBatchSize       = 256
	DefaultPollInterval    = 50 * time.Millisecond
	DefaultMaxAttempts     = 10
	DefaultRetryBackoff    = 100 * time.Millisecond
	DefaultMaxRetryBackoff = 10 * time.Second
	DefaultLeaseRetry      = time.Second
	DefaultOwnerTTL        = 10 * time.Second
	DefaultRetention       = 24 * time.Hour
	DefaultTrimInterval    = time.Minute
	DefaultStatusInterval  = 5 * time.Second
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
	// PollInterval is how long an owner waits after a read found no new entries.
	// The relay polls rather than blocks so that a lost lease or shutdown stops it at
	// once and idle partitions hold no connections. Default 50ms.
	PollInterval time.Duration
	// MaxAttempts is the number of failed deliveries of one entry after which it is moved
	// to the dead-letter stream. Failures are counted in Redis, so the count survives a
	// change of owner. Default 10.
	MaxAttempts int
	// RetryBackoff is the delay after an entry's first failed delivery; it doubles with
	// every further failure (with ±20% jitter) up to MaxRetryBackoff.
	// Defaults 100ms and 10s.
	RetryBackoff, MaxRetryBackoff time.Duration
	// LeaseRetry is the delay between two attempts to acquire a partition's lease, and
	// (doubled) the pause after handing a partition over to rebalance. Default 1s.
	LeaseRetry time.Duration
	// OwnerTTL is the lifetime of this relay's owner record and membership heartbeat;
	// both are refreshed every OwnerTTL/3. Relays that stopped heartbeating for OwnerTTL
	// no longer count when partitions are balanced. Default 10s.
	OwnerTTL time.Duration
	// Retention is how long acknowledged entries stay in the outbox stream; trimming never
	// removes an entry that any consumer group has not acknowledged, whatever Retention
	// says. Zero means the default 24h; a negative value keeps nothing beyond what is
	// unacknowledged.
	Retention time.Duration
	// TrimInterval is how often an owner trims its partition. Default 1m; negative
	// disables trimming.
	TrimInterval time.Duration
	// StatusInterval is how often an owner refreshes its partition's metric gauges.
	// Default 5s.
	StatusInterval time.Duration
	// Logger receives the relay's own events (ownership changes, failed deliveries, dead
	// letters). Nil discards.
	Logger *slog.Logger
	// Clock returns the current time. Nil means time.Now.
	Clock func() time.Time
	// Registerer receives the relay's Prometheus metrics. Nil means no metrics.
	Registerer prometheus.Registerer
}

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("outbox: invalid config")

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.Owner == "" {
		c.Owner = defaultOwner()
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
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
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.TrimInterval == 0 {
		c.TrimInterval = DefaultTrimInterval
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

// Validate applies the defaults and reports the first invalid field, wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Partitions < 1:
		return fmt.Errorf("%w: Partitions %d < 1", ErrInvalidConfig, c.Partitions)
	case len(c.Sinks) == 0:
		return fmt.Errorf("%w: no Sinks", ErrInvalidConfig)
	case c.BatchSize < 1:
		return fmt.Errorf("%w: BatchSize %d < 1", ErrInvalidConfig, c.BatchSize)
	case c.MaxAttempts < 1:
		return fmt.Errorf("%w: MaxAttempts %d < 1", ErrInvalidConfig, c.MaxAttempts)
	case c.PollInterval < 0, c.RetryBackoff < 0, c.MaxRetryBackoff < c.RetryBackoff,
		c.LeaseRetry < 0, c.StatusInterval < 0:
		return fmt.Errorf("%w: negative interval or MaxRetryBackoff < RetryBackoff", ErrInvalidConfig)
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
// and start it with Run.
//
// Guarantees, per consumer group:
//   - One owner per partition: only the relay holding the partition's lease reads,
//     delivers, claims and dead-letters its entries; losing the lease cancels the work at
//     once (no sink is called after that). Entries are claimed from earlier owners only
//     under the lease, so a slow retry can never run concurrently with a claim.
//   - At-least-once, in stream order: an entry is acknowledged (XACK) only after every sink
//     accepted it; a new owner first redelivers what earlier owners left pending. Sinks see
//     each account's events in version order, except that a redelivery may repeat a batch
//     and a replayed dead letter arrives after the later events of its account.
//   - Poison isolation: when a batch fails, its messages are retried one by one; a message
//     that fails MaxAttempts times (or with a Permanent error) goes to the dead-letter
//     stream with the reason, and delivery continues with the next one, including later
//     events of the same account (they are not held back). Dedup accepts the replayed dead
//     letter later because its version is a recorded gap.
//   - Trimming never drops an entry that any group has not acknowledged.
type Relay struct {
	rdb    redis.UniversalClient
	leaser Leaser
	cfg    Config
	log    *slog.Logger
	m      *metrics

	owned atomic.Int64 // partitions this relay currently owns
	share atomic.Int64 // partitions this relay may own (ceil(P / live relays))
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
	m, err := newMetrics(cfg.Registerer, cfg.Group)
	if err != nil {
		return nil, err
	}
	r := &Relay{rdb: rdb, leaser: leaser, cfg: cfg, log: cfg.Logger.With("owner", cfg.Owner, "group", cfg.Group), m: m}
	r.share.Store(int64(cfg.Partitions))
	return r, nil
}

// Owner returns the identity this relay records in leases, consumer names and status.
func (r *Relay) Owner() string { return r.cfg.Owner }

// leaseKey is the key of partition p's relay lease for the relay's group.
func (r *Relay) leaseKey(p int) string {
	return fmt.Sprintf("%s:{%d}:relay:%s:lease", r.cfg.Prefix, p, r.cfg.Group)
}

// ownerKey records which relay owns partition p (for status).
func (r *Relay) ownerKey(p int) string {
	return fmt.Sprintf("%s:{%d}:relay:%s:owner", r.cfg.Prefix, p, r.cfg.Group)
}

// attemptsKey counts failed deliveries per outbox entry ID of partition p.
func (r *Relay) attemptsKey(p int) string {
	return fmt.Sprintf("%s:{%d}:relay:%s:attempts", r.cfg.Prefix, p, r.cfg.Group)
}

// membersKey holds the heartbeats of the group's running relays. It is not a partition
// key (it is only ever used alone, so it is safe on Redis Cluster).
func (r *Relay) membersKey() string {
	return fmt.Sprintf("%s:relay:%s:members", r.cfg.Prefix, r.cfg.Group)
}

// Run serves partitions until ctx is done: for each partition it competes for the lease,
// delivers while it holds it, and tries again after LeaseRetry otherwise. Relays of one
// group balance the partitions between them (each takes at most ceil(P / live relays)).
// Everything Run starts has stopped when it returns; it returns nil after ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.heartbeat(ctx) }()
	for p := 0; p < r.cfg.Partitions; p++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.servePartition(ctx, p) }()
	}
	wg.Wait()
	return nil
}

// heartbeat keeps this relay in the members set and derives its fair share of partitions.
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
		pipe.ZAdd(ctx, key, redis.Z{Score: float64(now.Add(r.cfg.OwnerTTL).UnixMilli()), Member: r.cfg.Owner})
		pipe.ZRemRangeByScore(ctx, key, "-inf", fmt.Sprint(now.UnixMilli()))
		card := pipe.ZCard(ctx, key)
		pipe.Expire(ctx, key, 10*r.cfg.OwnerTTL)
		if _, err := pipe.Exec(ctx); err == nil {
			n := max(card.Val(), 1)
			r.share.Store(int64(math.Ceil(float64(r.cfg.Partitions) / float64(n))))
		} else if ctx.Err() == nil {
			r.log.Warn("outbox relay: heartbeat failed", "err", err)
		}
		if !sleep(ctx, r.cfg.OwnerTTL/3) {
			return
		}
	}
}

// errYield ends a partition's ownership voluntarily so that another relay can take it.
var errYield = errors.New("outbox: partition handed over for balance")

// servePartition competes for partition p's lease until ctx is done.
func (r *Relay) servePartition(ctx context.Context, p int) {
	// Spread the first attempts a little so that relays started together interleave.
	if !sleep(ctx, jitter(r.cfg.LeaseRetry/10)) {
		return
	}
	for ctx.Err() == nil {
		delay := jitter(r.cfg.LeaseRetry)
		if r.owned.Load() < r.share.Load() {
			err := r.leaser.Do(ctx, r.leaseKey(p), func(lctx context.Context) error {
				return r.own(lctx, p)
			})
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, errYield):
				delay = 2 * r.cfg.LeaseRetry
			case err != nil && r.isNotAcquired(err):
			case err != nil:
				r.log.Warn("outbox relay: partition ownership ended", "partition", p, "err", err)
			}
		}
		if !sleep(ctx, delay) {
			return
		}
	}
}

// isNotAcquired reports whether err only says that the lease is held elsewhere. The relay
// cannot name lock.ErrNotAcquired (no import), so every error from Do that did not come
// from the relay's own work counts as "busy"; those are logged at debug level.
func (r *Relay) isNotAcquired(err error) bool {
	var oe *ownError
	if errors.As(err, &oe) {
		return false
	}
	r.log.Debug("outbox relay: lease not acquired", "err", err)
	return true
}

// ownError marks errors that happened while the relay owned a partition.
type ownError struct{ err error }

func (e *ownError) Error() string { return e.err.Error() }
func (e *ownError) Unwrap() error { return e.err }

// own runs while this relay holds partition p's lease; ctx is cancelled when it is lost.
func (r *Relay) own(ctx context.Context, p int) (err error) {
	r.owned.Add(1)
	yielded := false
	defer func() {
		if !yielded {
			r.owned.Add(-1)
		}
		r.releaseOwner(ctx, p)
		r.m.setOwned(p, false)
		switch {
		case yielded:
			err = errYield
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

	now := r.cfg.Clock()
	nextOwner := now.Add(r.cfg.OwnerTTL / 3)
	nextTrim := now.Add(jitter(r.cfg.TrimInterval))
	nextStatus := now
	for {
		if ctx.Err() != nil {
			return nil
		}
		now = r.cfg.Clock()
		if !now.Before(nextOwner) {
			if err := r.recordOwner(ctx, p); err != nil {
				return err
			}
			nextOwner = now.Add(r.cfg.OwnerTTL / 3)
		}
		if r.cfg.TrimInterval > 0 && !now.Before(nextTrim) {
			n, err := r.Trim(ctx, p)
			if err != nil && ctx.Err() == nil {
				r.log.Warn("outbox relay: trim failed", "partition", p, "err", err)
			}
			r.m.trimmed(p, n)
			nextTrim = now.Add(r.cfg.TrimInterval)
		}
		if r.m != nil && !now.Before(nextStatus) {
			if st, err := r.PartitionStatus(ctx, p); err == nil {
				r.m.observe(st)
			}
			nextStatus = now.Add(r.cfg.StatusInterval)
		}
		if cur := r.owned.Load(); cur > r.share.Load() && r.owned.CompareAndSwap(cur, cur-1) {
			yielded = true
			return errYield
		}
		n, err := o.readNew(ctx)
		if err != nil {
			return err
		}
		if n == 0 && !sleep(ctx, r.cfg.PollInterval) {
			return nil
		}
	}
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

// sleep waits d or until ctx is done; it reports whether the full d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// jitter returns d ±20%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
}
