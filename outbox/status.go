package outbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// ErrUnknownPartition is returned for a partition number outside 0..Partitions-1.
var ErrUnknownPartition = errors.New("outbox: unknown partition")

// PartitionStatus is the delivery state of one partition for a relay group, as Admin reads
// it from Redis. Relays, the HTTP status endpoint and the metrics all report this one type.
type PartitionStatus struct {
	Partition int `json:"partition"`
	// Owner is the relay that holds the partition's lease, "" when none does.
	Owner string `json:"owner"`
	// Consumed is false while the group does not exist on the partition's stream: no relay
	// of the group has ever served the partition, and every entry is backlog.
	Consumed bool `json:"consumed"`
	// Length is the number of entries in the outbox stream, acknowledged ones that are
	// waiting to be trimmed included.
	Length int64 `json:"length"`
	// Backlog is the number of entries the group has not acknowledged: never read plus
	// Pending. Trimming never removes them, so a backlog that keeps growing (no relay
	// running, a sink that keeps failing) grows Redis's memory. When Redis cannot report a
	// group's lag (miniredis), unread entries are counted one by one up to 100,000.
	Backlog int64 `json:"backlog"`
	// OldestAgeSeconds is the age of the oldest unacknowledged entry (from its stream
	// ID), 0 when Backlog is 0.
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// Pending is the number of entries read by an owner but not yet acknowledged.
	Pending int64 `json:"pending"`
	// DeadLetters is the length of the partition's dead-letter stream.
	DeadLetters int64 `json:"dead_letters"`
}

// maxLagCount bounds the entries counted one by one when the server cannot report a
// group's lag (miniredis, or Redis after deletions in the unread range).
const maxLagCount = 100_000

// Status returns the status of every partition, in partition order, in two pipelined
// round trips (or one per Cluster node). It returns wrapped Redis errors.
func (a *Admin) Status(ctx context.Context) ([]PartitionStatus, error) {
	ps := make([]int, a.cfg.Partitions)
	for p := range ps {
		ps[p] = p
	}
	return a.status(ctx, ps)
}

// PartitionStatus returns the status of partition p. It returns ErrUnknownPartition for a
// partition out of range and wrapped Redis errors.
func (a *Admin) PartitionStatus(ctx context.Context, p int) (PartitionStatus, error) {
	if err := a.checkPartition(p); err != nil {
		return PartitionStatus{}, err
	}
	st, err := a.status(ctx, []int{p})
	if err != nil {
		return PartitionStatus{}, err
	}
	return st[0], nil
}

// partitionReads are the commands status sends for one partition.
type partitionReads struct {
	owner  *redis.StringCmd
	dead   *redis.IntCmd
	length *redis.IntCmd
	groups *redis.XInfoGroupsCmd
	// second round
	unread  *redis.XMessageSliceCmd // entries after the last-delivered ID, when the lag is unknown
	pending *redis.XPendingCmd
	first   *redis.XMessageSliceCmd // oldest unread entry
}

func (a *Admin) status(ctx context.Context, ps []int) ([]PartitionStatus, error) {
	reads := make([]partitionReads, len(ps))
	pipe := a.rdb.Pipeline()
	for i, p := range ps {
		stream := StreamKey(a.cfg.Prefix, p)
		reads[i] = partitionReads{
			owner:  pipe.Get(ctx, a.ownerKey(p)),
			dead:   pipe.XLen(ctx, DeadLetterKey(a.cfg.Prefix, p)),
			length: pipe.XLen(ctx, stream),
			groups: pipe.XInfoGroups(ctx, stream),
		}
	}
	_, _ = pipe.Exec(ctx) // every command carries its own error
	out := make([]PartitionStatus, len(ps))
	last := make([]string, len(ps))
	unread := make([]int64, len(ps))
	second := a.rdb.Pipeline()
	for i, p := range ps {
		fail := func(what string, err error) ([]PartitionStatus, error) {
			return nil, fmt.Errorf("outbox: status of partition %d: %s: %w", p, what, err)
		}
		rd := &reads[i]
		st := PartitionStatus{Partition: p}
		owner, err := rd.owner.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fail("owner", err)
		}
		st.Owner = owner
		if st.DeadLetters, err = rd.dead.Result(); err != nil {
			return fail("dead letters", err)
		}
		if st.Length, err = rd.length.Result(); err != nil {
			return fail("length", err)
		}
		groups, err := rd.groups.Result()
		if err != nil && !isNoSuchKey(err) {
			return fail("groups", err)
		}
		unread[i] = -1
		for _, g := range groups {
			if g.Name != a.cfg.Group {
				continue
			}
			st.Consumed = true
			st.Pending, last[i] = g.Pending, g.LastDeliveredID
			if g.Lag >= 0 && g.EntriesRead > 0 {
				unread[i] = g.Lag
			}
		}
		stream := StreamKey(a.cfg.Prefix, p)
		switch {
		case !st.Consumed || isZeroID(last[i]):
			unread[i] = st.Length - st.Pending
			last[i] = ""
		case unread[i] < 0:
			rd.unread = second.XRangeN(ctx, stream, "("+last[i], "+", maxLagCount)
		}
		switch {
		case st.Pending > 0: // the oldest pending entry is older than every unread one
			rd.pending = second.XPending(ctx, stream, a.cfg.Group)
		case rd.unread != nil: // its first entry is the oldest unread one
		case unread[i] > 0:
			start := "-"
			if last[i] != "" {
				start = "(" + last[i]
			}
			rd.first = second.XRangeN(ctx, stream, start, "+", 1)
		}
		out[i] = st
	}
	_, _ = second.Exec(ctx)
	now := a.cfg.Clock()
	for i := range out {
		st, rd := &out[i], &reads[i]
		fail := func(what string, err error) ([]PartitionStatus, error) {
			return nil, fmt.Errorf("outbox: status of partition %d: %s: %w", st.Partition, what, err)
		}
		oldest := ""
		if rd.unread != nil {
			xs, err := rd.unread.Result()
			if err != nil {
				return fail("lag", err)
			}
			unread[i] = int64(len(xs))
			if len(xs) > 0 {
				oldest = xs[0].ID
			}
		}
		st.Backlog = max(0, unread[i]) + st.Pending
		switch {
		case rd.pending != nil:
			sum, err := rd.pending.Result()
			if err != nil {
				return fail("pending", err)
			}
			oldest = sum.Lower
		case rd.first != nil:
			xs, err := rd.first.Result()
			if err != nil {
				return fail("oldest entry", err)
			}
			if len(xs) > 0 {
				oldest = xs[0].ID
			}
		}
		if ms, ok := idMillis(oldest); ok {
			st.OldestAgeSeconds = max(0, now.Sub(time.UnixMilli(ms)).Seconds())
		}
	}
	return out, nil
}

// isZeroID reports whether a last-delivered ID means "nothing delivered yet". Redis says
// "0-0"; miniredis keeps the "0" the group was created with.
func isZeroID(id string) bool { return id == "" || id == "0" || id == "0-0" }

// idMillis returns the millisecond part of a stream ID.
func idMillis(id string) (int64, bool) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	return n, err == nil && id != ""
}

func isNoSuchKey(err error) bool {
	return redis.HasErrorPrefix(err, "no such key") || redis.HasErrorPrefix(err, "ERR no such key")
}

// collectTimeout bounds the Redis reads of one scrape.
const collectTimeout = 5 * time.Second

// statusCollector exports every partition's status, read from Redis at scrape time, so
// that the backlog of partitions no relay serves is visible too.
type statusCollector struct {
	a                                                           *Admin
	up, backlog, oldest, pending, deadLetters, length, consumed *prometheus.Desc
}

func newStatusCollector(a *Admin) *statusCollector {
	labels := prometheus.Labels{"group": a.cfg.Group}
	desc := func(name, help string, partition bool) *prometheus.Desc {
		var vars []string
		if partition {
			vars = []string{"partition"}
		}
		return prometheus.NewDesc(prometheus.BuildFQName("tally", "outbox", name), help, vars, labels)
	}
	return &statusCollector{
		a:           a,
		up:          desc("status_up", "1 when the last scrape read the outbox status from Redis, 0 when it failed.", false),
		backlog:     desc("backlog", "Outbox entries the group has not acknowledged (never read plus pending); trimming never removes them.", true),
		oldest:      desc("oldest_unacked_age_seconds", "Age of the oldest outbox entry the group has not acknowledged; 0 without backlog.", true),
		pending:     desc("pending", "Outbox entries read by the partition's owner but not yet acknowledged.", true),
		deadLetters: desc("dead_letters", "Length of the partition's dead-letter stream.", true),
		length:      desc("stream_length", "Entries in the outbox stream, acknowledged ones awaiting trimming included.", true),
		consumed:    desc("consumed", "1 once the group exists on the partition's stream (a relay has served it), else 0.", true),
	}
}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.backlog, c.oldest, c.pending, c.deadLetters, c.length, c.consumed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the status of every partition.
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), collectTimeout)
	defer cancel()
	sts, err := c.a.Status(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, st := range sts {
		l := strconv.Itoa(st.Partition)
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(st.Backlog), l)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, st.OldestAgeSeconds, l)
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(st.Pending), l)
		ch <- prometheus.MustNewConstMetric(c.deadLetters, prometheus.GaugeValue, float64(st.DeadLetters), l)
		ch <- prometheus.MustNewConstMetric(c.length, prometheus.GaugeValue, float64(st.Length), l)
		ch <- prometheus.MustNewConstMetric(c.consumed, prometheus.GaugeValue, b2f(st.Consumed), l)
	}
}

// IdlePending returns how many entries of partition p the group holds pending (read, not
// acknowledged) without a delivery attempt for at least minIdle, counting up to 100,000,
// and the stream ID of the oldest of them ("" when none). The owner of a partition retries
// its pending entries within the backoff's 10 s cap and a new owner claims a dead one's, so
// an entry idle far longer than that is stuck. It returns ErrUnknownPartition and wrapped
// Redis errors; a stream or group that does not exist has nothing pending.
func (a *Admin) IdlePending(ctx context.Context, p int, minIdle time.Duration) (int64, string, error) {
	if err := a.checkPartition(p); err != nil {
		return 0, "", err
	}
	xs, err := a.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: StreamKey(a.cfg.Prefix, p), Group: a.cfg.Group,
		Idle: minIdle, Start: "-", End: "+", Count: maxLagCount}).Result()
	switch {
	case err != nil && (isNoSuchKey(err) || redis.HasErrorPrefix(err, "NOGROUP")):
		return 0, "", nil
	case err != nil:
		return 0, "", fmt.Errorf("outbox: idle pending of partition %d: %w", p, err)
	case len(xs) == 0:
		return 0, "", nil
	}
	return int64(len(xs)), xs[0].ID, nil
}

// Watermarks returns the consumer's sequence watermark of every key it has applied in
// partition p (see Dedup): the highest Seq per key. A producer that numbers its messages
// (the ledger's account versions) can check them against its own state: a watermark above
// the producer's current sequence means the producer lost messages the consumer had
// already applied. It reads the hash in pages (HSCAN) and returns wrapped Redis errors.
func (d *Dedup) Watermarks(ctx context.Context, p int) (map[string]int64, error) {
	out := map[string]int64{}
	iter := d.rdb.HScan(ctx, d.watermarkKey(p), 0, "", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		if !iter.Next(ctx) {
			break
		}
		n, err := strconv.ParseInt(iter.Val(), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("outbox: dedup watermark of %q in partition %d: %w", key, p, err)
		}
		out[key] = n
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("outbox: dedup watermarks of partition %d: %w", p, err)
	}
	return out, nil
}
