package ledger

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Transfer and hold transitions, the state label of tally_ledger_transfers_total and
// tally_ledger_holds_total.
const (
	transitionCreated   = "created"
	transitionCompleted = "completed"
	transitionRefunded  = "refunded"
)

// holdState returns the state label of tally_ledger_holds_total a hold event records.
func holdState(eventType string) (string, bool) {
	switch eventType {
	case EventHoldPlaced:
		return "placed", true
	case EventHoldCaptured:
		return "captured", true
	case EventHoldVoided:
		return "voided", true
	case EventHoldExpired:
		return "expired", true
	}
	return "", false
}

// eventTypes returns every event type (the label values of tally_ledger_events_total).
func eventTypes() []string {
	return []string{EventAccountOpened, EventDeposited, EventWithdrawn, EventTransferDebited,
		EventTransferCredited, EventTransferRefunded, EventHoldPlaced, EventHoldCaptured, EventHoldVoided,
		EventHoldExpired, EventAccountClosed, EventOverdraftLimitSet, EventAlertCreated, EventAlertDeleted, EventBalanceAlert}
}

// transitions counts what one request's decision did to transfers; it is added to the
// metrics only once the request committed (a fork that was rejected or a slice that was
// skipped counts nothing).
type transitions struct {
	transfersCreated, transfersCompleted, transfersRefunded int
}

// metrics are the ledger's Prometheus collectors: what this process committed. A nil
// *metrics records nothing. The label sets are bounded: event types, a few states, and
// partitions; never accounts.
type metrics struct {
	commitRequests, commitAccounts prometheus.Histogram
	events, transfers, holds       *prometheus.CounterVec
	// The children, resolved once: the commit path counts without label look-ups.
	byEvent                                                 map[string]eventCounters
	transfersCreated, transfersCompleted, transfersRefunded prometheus.Counter
}

// eventCounters are the counters one committed event of a type increments.
type eventCounters struct {
	event, hold prometheus.Counter // hold: nil unless a hold event
}

// newMetrics registers the ledger's collectors with reg (nil: no metrics): the commit
// histograms and counters, and a collector that reads the pending transfers and holds of
// every partition from Redis at scrape time.
func newMetrics(reg prometheus.Registerer, l *Ledger) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		commitRequests: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_ledger_commit_requests",
			Help:    "Requests committed by one commit script call (group commit size).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 .. 1024, the largest MaxBatch
		}),
		commitAccounts: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_ledger_commit_accounts",
			Help:    "Accounts written by one commit script call (cross-account batch size).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 .. 1024, the largest MaxBatch
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ledger_events_total", Help: "Events this process committed, by event type.",
		}, []string{"type"}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ledger_transfers_total",
			Help: "Transfer transitions this process committed: created (source debited), completed (destination credited and the record completed), refunded.",
		}, []string{"state"}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ledger_holds_total",
			Help: "Hold transitions this process committed: placed, captured, voided, expired (the sweeper's HoldExpired).",
		}, []string{"state"}),
	}
	// Every label value exists from the start, so that rate() sees the first increment.
	m.byEvent = map[string]eventCounters{}
	for _, typ := range eventTypes() {
		c := eventCounters{event: m.events.WithLabelValues(typ)}
		if s, ok := holdState(typ); ok {
			c.hold = m.holds.WithLabelValues(s)
		}
		m.byEvent[typ] = c
	}
	m.transfersCreated = m.transfers.WithLabelValues(transitionCreated)
	m.transfersCompleted = m.transfers.WithLabelValues(transitionCompleted)
	m.transfersRefunded = m.transfers.WithLabelValues(transitionRefunded)
	// The configuration a load test or a dashboard needs to read the other series right;
	// Prometheus's info-metric pattern: the value is 1, the facts are the labels.
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tally_ledger_info",
		Help: "Always 1; the labels are this process's ledger configuration: concurrency mode, group commit, partition count.",
		ConstLabels: prometheus.Labels{
			"mode":         string(l.cfg.Mode),
			"group_commit": strconv.FormatBool(!l.cfg.DisableGroupCommit),
			"partitions":   strconv.Itoa(l.cfg.Partitions),
		},
	})
	info.Set(1)
	for _, c := range []prometheus.Collector{info, m.commitRequests, m.commitAccounts, m.events, m.transfers, m.holds, newPendingCollector(l)} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ledger: register metrics: %w", err)
		}
	}
	return m, nil
}

// committed records one commit script call: the accounts of pl whose slice was not
// skipped, their events, and the transitions of the requests that committed.
func (m *metrics) committed(pl plan, skipped map[int]bool, requests int, ts []transitions) {
	if m == nil {
		return
	}
	m.commitRequests.Observe(float64(requests))
	accounts := 0
	for _, aw := range pl.accounts {
		if skipped[aw.slice] || len(aw.events) == 0 {
			continue
		}
		accounts++
		for _, e := range aw.events {
			c := m.byEvent[e.Type]
			if c.event == nil { // a type eventTypes does not list: count it all the same
				m.events.WithLabelValues(e.Type).Inc()
				continue
			}
			c.event.Inc()
			if c.hold != nil {
				c.hold.Inc()
			}
		}
	}
	m.commitAccounts.Observe(float64(accounts))
	// Summed first: one atomic add per state and commit, not three per request.
	var sum transitions
	for _, t := range ts {
		sum.transfersCreated += t.transfersCreated
		sum.transfersCompleted += t.transfersCompleted
		sum.transfersRefunded += t.transfersRefunded
	}
	m.transfersCreated.Add(float64(sum.transfersCreated))
	m.transfersCompleted.Add(float64(sum.transfersCompleted))
	m.transfersRefunded.Add(float64(sum.transfersRefunded))
}

// transferCompleted records a cross-partition transfer marked completed after its credit.
func (m *metrics) transferCompleted() {
	if m != nil {
		m.transfersCompleted.Inc()
	}
}

// pendingTimeout bounds the Redis reads of one scrape.
const pendingTimeout = 5 * time.Second

// pendingCollector exports, per partition and read from Redis at scrape time, the
// cross-partition transfers still pending and the holds still pending (their expiry
// index), whichever process made them.
type pendingCollector struct {
	l                    *Ledger
	up, transfers, holds *prometheus.Desc
}

func newPendingCollector(l *Ledger) *pendingCollector {
	p := []string{"partition"}
	return &pendingCollector{
		l:  l,
		up: prometheus.NewDesc("tally_ledger_status_up", "1 when the last scrape read the pending transfers and holds from Redis, 0 when it failed.", nil, nil),
		transfers: prometheus.NewDesc("tally_ledger_transfers_pending",
			"Cross-partition transfers debited but not yet completed or refunded.", p, nil),
		holds: prometheus.NewDesc("tally_ledger_holds_pending",
			"Holds placed and not yet captured, voided or recorded expired (an expired hold stays until the sweeper's HoldExpired, about a second).", p, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *pendingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.transfers
	ch <- c.holds
}

// Collect implements prometheus.Collector: one pipelined round trip (one per Cluster node)
// of two ZCARDs per partition.
func (c *pendingCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), pendingTimeout)
	defer cancel()
	ks := c.l.store.keys
	pipe := c.l.store.rdb.Pipeline()
	transfers := make([]*redis.IntCmd, ks.partitions)
	holds := make([]*redis.IntCmd, ks.partitions)
	for p := range ks.partitions {
		transfers[p] = pipe.ZCard(ctx, ks.transfersPending(p))
		holds[p] = pipe.ZCard(ctx, ks.holdExpiry(p))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	for p := range ks.partitions {
		l := strconv.Itoa(p)
		ch <- prometheus.MustNewConstMetric(c.transfers, prometheus.GaugeValue, float64(transfers[p].Val()), l)
		ch <- prometheus.MustNewConstMetric(c.holds, prometheus.GaugeValue, float64(holds[p].Val()), l)
	}
}
