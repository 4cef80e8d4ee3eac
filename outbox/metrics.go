package outbox

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's own Prometheus collectors: what this process did. The state of
// the partitions (backlog, age, dead letters) is exported by an Admin's collector instead,
// from Redis, whichever process owns them. A nil *metrics records nothing.
type metrics struct {
	deliveredC, failures, deadLetteredC, deadDroppedC, reclaimedC, trimmedC *prometheus.CounterVec
	ownedG                                                                  *prometheus.GaugeVec
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
	m := &metrics{
		deliveredC:    counter("delivered_total", "Outbox entries delivered to every sink and acknowledged."),
		failures:      counter("delivery_failures_total", "Failed deliveries of single outbox entries."),
		deadLetteredC: counter("dead_lettered_total", "Outbox entries moved to the dead-letter stream."),
		deadDroppedC:  counter("dead_letters_dropped_total", "Dead letters removed because the dead-letter stream reached its bound (DeadLetterMaxLen)."),
		reclaimedC:    counter("reclaimed_total", "Pending entries taken over from earlier owners."),
		trimmedC:      counter("trimmed_total", "Acknowledged entries trimmed from the outbox stream."),
		ownedG: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "tally", Subsystem: "outbox",
			Name: "owned", Help: "1 while this process's relay owns the partition.", ConstLabels: labels}, []string{"partition"}),
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
	for _, c := range []**prometheus.CounterVec{&m.deliveredC, &m.failures, &m.deadLetteredC, &m.deadDroppedC, &m.reclaimedC, &m.trimmedC} {
		*c = register(*c).(*prometheus.CounterVec)
	}
	m.ownedG = register(m.ownedG).(*prometheus.GaugeVec)
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

func (m *metrics) deadLettered(p int, dropped int64) {
	if m != nil {
		m.deadLetteredC.WithLabelValues(plabel(p)).Inc()
		if dropped > 0 {
			m.deadDroppedC.WithLabelValues(plabel(p)).Add(float64(dropped))
		}
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
