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

// PartitionStatus is the delivery state of one partition for the relay's group.
type PartitionStatus struct {
	Partition int `json:"partition"`
	// Owner is the relay that holds the partition's lease, "" when none does.
	Owner string `json:"owner"`
	// Lag is the number of entries not yet delivered: never read plus Pending.
	Lag int64 `json:"lag"`
	// LagSeconds is the age of the oldest entry not yet delivered, 0 when Lag is 0.
	LagSeconds float64 `json:"lag_seconds"`
	// Pending is the number of entries read by an owner but not yet acknowledged.
	Pending int64 `json:"pending"`
	// DeadLetters is the length of the partition's dead-letter stream.
	DeadLetters int64 `json:"dead_letters"`
}

// maxLagCount bounds the entries counted one by one when the server cannot report a
// group's lag (miniredis, or Redis after deletions in the unread range); beyond it Lag is
// reported as at least this many.
const maxLagCount = 100_000

// Status returns the status of every partition, in partition order. It reads Redis only,
// so any process can call it, whether or not it owns partitions.
func (r *Relay) Status(ctx context.Context) ([]PartitionStatus, error) {
	out := make([]PartitionStatus, 0, r.cfg.Partitions)
	for p := 0; p < r.cfg.Partitions; p++ {
		st, err := r.PartitionStatus(ctx, p)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// PartitionStatus returns the status of partition p. It returns ErrUnknownPartition for a
// partition out of range and wrapped Redis errors.
func (r *Relay) PartitionStatus(ctx context.Context, p int) (PartitionStatus, error) {
	if p < 0 || p >= r.cfg.Partitions {
		return PartitionStatus{}, fmt.Errorf("%w: %d", ErrUnknownPartition, p)
	}
	st := PartitionStatus{Partition: p}
	stream := StreamKey(r.cfg.Prefix, p)
	fail := func(what string, err error) (PartitionStatus, error) {
		return PartitionStatus{}, fmt.Errorf("outbox: status of partition %d: %s: %w", p, what, err)
	}
	owner, err := r.rdb.Get(ctx, r.ownerKey(p)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fail("owner", err)
	}
	st.Owner = owner
	if st.DeadLetters, err = r.rdb.XLen(ctx, DeadLetterKey(r.cfg.Prefix, p)).Result(); err != nil {
		return fail("dead letters", err)
	}
	groups, err := r.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if isNoSuchKey(err) {
			return st, nil
		}
		return fail("groups", err)
	}
	last := "0-0"
	unread := int64(-1)
	for _, g := range groups {
		if g.Name != r.cfg.Group {
			continue
		}
		st.Pending, last = g.Pending, g.LastDeliveredID
		if g.Lag >= 0 && g.EntriesRead > 0 {
			unread = g.Lag
		}
	}
	if unread < 0 {
		if last == "0-0" {
			unread, err = r.rdb.XLen(ctx, stream).Result()
		} else {
			var xs []redis.XMessage
			xs, err = r.rdb.XRangeN(ctx, stream, "("+last, "+", maxLagCount).Result()
			unread = int64(len(xs))
		}
		if err != nil {
			return fail("lag", err)
		}
	}
	st.Lag = unread + st.Pending
	oldest := ""
	if st.Pending > 0 {
		sum, err := r.rdb.XPending(ctx, stream, r.cfg.Group).Result()
		if err != nil {
			return fail("pending", err)
		}
		oldest = sum.Lower
	} else if unread > 0 {
		start := "-"
		if last != "0-0" {
			start = "(" + last
		}
		xs, err := r.rdb.XRangeN(ctx, stream, start, "+", 1).Result()
		if err != nil {
			return fail("oldest entry", err)
		}
		if len(xs) > 0 {
			oldest = xs[0].ID
		}
	}
	if ms, ok := idMillis(oldest); ok {
		st.LagSeconds = max(0, r.cfg.Clock().Sub(time.UnixMilli(ms)).Seconds())
	}
	return st, nil
}

// idMillis returns the millisecond part of a stream ID.
func idMillis(id string) (int64, bool) {
	ms, _, ok := strings.Cut(id, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	return n, err == nil
}

func isNoSuchKey(err error) bool {
	return redis.HasErrorPrefix(err, "no such key") || redis.HasErrorPrefix(err, "ERR no such key")
}

// metrics are the relay's Prometheus collectors. A nil *metrics records nothing.
type metrics struct {
	deliveredC, failures, deadLetteredC, reclaimedC, trimmedC *prometheus.CounterVec
	lag, lagSeconds, pending, deadLetters, ownedG             *prometheus.GaugeVec
}

// newMetrics registers the relay's collectors with reg (nil: no metrics). A collector
// that another relay of the same group already registered on reg is shared.
func newMetrics(reg prometheus.Registerer, group string) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	labels := prometheus.Labels{"group": group}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tally", Subsystem: "outbox",
			Name: name, Help: help, ConstLabels: labels}, []string{"partition"})
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "tally", Subsystem: "outbox",
			Name: name, Help: help, ConstLabels: labels}, []string{"partition"})
	}
	m := &metrics{
		deliveredC:    counter("delivered_total", "Outbox entries delivered to every sink and acknowledged."),
		failures:      counter("delivery_failures_total", "Failed deliveries of single outbox entries."),
		deadLetteredC: counter("dead_lettered_total", "Outbox entries moved to the dead-letter stream."),
		reclaimedC:    counter("reclaimed_total", "Pending entries taken over from earlier owners."),
		trimmedC:      counter("trimmed_total", "Acknowledged entries trimmed from the outbox stream."),
		lag:           gauge("lag", "Entries not yet delivered (unread plus pending)."),
		lagSeconds:    gauge("lag_seconds", "Age of the oldest entry not yet delivered."),
		pending:       gauge("pending", "Entries read but not yet acknowledged."),
		deadLetters:   gauge("dead_letters", "Length of the dead-letter stream."),
		ownedG:        gauge("owned", "1 while this process's relay owns the partition."),
	}
	var err error
	register := func(c prometheus.Collector) prometheus.Collector {
		if rerr := reg.Register(c); rerr != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(rerr, &are) {
				return are.ExistingCollector
			}
			err = errors.Join(err, rerr)
		}
		return c
	}
	for _, c := range []**prometheus.CounterVec{&m.deliveredC, &m.failures, &m.deadLetteredC, &m.reclaimedC, &m.trimmedC} {
		*c = register(*c).(*prometheus.CounterVec)
	}
	for _, g := range []**prometheus.GaugeVec{&m.lag, &m.lagSeconds, &m.pending, &m.deadLetters, &m.ownedG} {
		*g = register(*g).(*prometheus.GaugeVec)
	}
	if err != nil {
		return nil, fmt.Errorf("outbox: register metrics: %w", err)
	}
	return m, nil
}

func plabel(p int) string { return strconv.Itoa(p) }

func (m *metrics) delivered(p, n int) {
	if m != nil {
		m.deliveredC.WithLabelValues(plabel(p)).Add(float64(n))
	}
}

func (m *metrics) failed(p int) {
	if m != nil {
		m.failures.WithLabelValues(plabel(p)).Inc()
	}
}

func (m *metrics) deadLettered(p int) {
	if m != nil {
		m.deadLetteredC.WithLabelValues(plabel(p)).Inc()
	}
}

func (m *metrics) reclaimed(p int, n int64) {
	if m != nil {
		m.reclaimedC.WithLabelValues(plabel(p)).Add(float64(n))
	}
}

func (m *metrics) trimmed(p int, n int64) {
	if m != nil && n > 0 {
		m.trimmedC.WithLabelValues(plabel(p)).Add(float64(n))
	}
}

func (m *metrics) setOwned(p int, owned bool) {
	if m == nil {
		return
	}
	v := 0.0
	if owned {
		v = 1
	}
	m.ownedG.WithLabelValues(plabel(p)).Set(v)
}

func (m *metrics) observe(st PartitionStatus) {
	if m == nil {
		return
	}
	l := plabel(st.Partition)
	m.lag.WithLabelValues(l).Set(float64(st.Lag))
	m.lagSeconds.WithLabelValues(l).Set(st.LagSeconds)
	m.pending.WithLabelValues(l).Set(float64(st.Pending))
	m.deadLetters.WithLabelValues(l).Set(float64(st.DeadLetters))
}
