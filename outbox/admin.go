package outbox

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// AdminConfig configures an Admin. Zero fields take the documented defaults; they must match
// the relays whose partitions the Admin reports on.
type AdminConfig struct {
	// Prefix is the first component of every key (see StreamKey). Default "tally".
	Prefix string
	// Partitions is the number of outbox partitions P. Default 16.
	Partitions int
	// Group is the relays' consumer group. Default "relay".
	Group string
	// Clock returns the current time (for ages). Nil means time.Now.
	Clock func() time.Time
	// Registerer, when set, receives a collector that reads every partition's status from
	// Redis at scrape time (see NewAdmin). Nil means no metrics.
	Registerer prometheus.Registerer
}

func (c AdminConfig) withDefaults() AdminConfig {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

// Validate applies the defaults and reports an invalid field, wrapping ErrInvalidConfig.
func (c AdminConfig) Validate() error {
	if c = c.withDefaults(); c.Partitions < 1 {
		return fmt.Errorf("%w: Partitions %d < 1", ErrInvalidConfig, c.Partitions)
	}
	return nil
}

// Admin reads the delivery state of a relay group's partitions and replays their dead
// letters. Everything it knows lives in Redis, so any process can use it, whether or not a
// relay runs there; every Relay embeds one for its own group. It is safe for concurrent
// use.
type Admin struct {
	rdb redis.UniversalClient
	cfg AdminConfig
}

// NewAdmin returns an Admin over rdb (standalone, cluster or embedded Redis). When
// cfg.Registerer is set it registers a collector there that exports, per partition and
// read at scrape time (bounded by 5s): tally_outbox_backlog, tally_outbox_oldest_unacked_age_seconds,
// tally_outbox_pending, tally_outbox_dead_letters, tally_outbox_stream_length and
// tally_outbox_consumed, plus tally_outbox_status_up (0 when the last scrape could not read
// Redis). It returns an error wrapping ErrInvalidConfig for an invalid cfg or a nil rdb,
// and the registration error.
func NewAdmin(rdb redis.UniversalClient, cfg AdminConfig) (*Admin, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrInvalidConfig)
	}
	a := &Admin{rdb: rdb, cfg: cfg.withDefaults()}
	if a.cfg.Registerer != nil {
		if err := a.cfg.Registerer.Register(newStatusCollector(a)); err != nil {
			return nil, fmt.Errorf("outbox: register status metrics: %w", err)
		}
	}
	return a, nil
}

// Partitions returns the number of partitions the Admin covers.
func (a *Admin) Partitions() int { return a.cfg.Partitions }

// checkPartition returns ErrUnknownPartition (wrapped) for p outside 0..P-1.
func (a *Admin) checkPartition(p int) error {
	if p < 0 || p >= a.cfg.Partitions {
		return fmt.Errorf("%w: %d", ErrUnknownPartition, p)
	}
	return nil
}

// leaseKey is the key of partition p's relay lease for the group.
func (a *Admin) leaseKey(p int) string {
	return fmt.Sprintf("%s:{%d}:relay:%s:lease", a.cfg.Prefix, p, a.cfg.Group)
}

// ownerKey records which relay owns partition p (for status and for relays looking for
// partitions without a live owner).
func (a *Admin) ownerKey(p int) string {
	return fmt.Sprintf("%s:{%d}:relay:%s:owner", a.cfg.Prefix, p, a.cfg.Group)
}

// attemptsKey counts failed deliveries per outbox entry ID of partition p.
func (a *Admin) attemptsKey(p int) string {
	return fmt.Sprintf("%s:{%d}:relay:%s:attempts", a.cfg.Prefix, p, a.cfg.Group)
}

// membersKey holds the heartbeats of the group's running relays. It is not a partition
// key (it is only ever used alone, so it is safe on Redis Cluster).
func (a *Admin) membersKey() string {
	return fmt.Sprintf("%s:relay:%s:members", a.cfg.Prefix, a.cfg.Group)
}
