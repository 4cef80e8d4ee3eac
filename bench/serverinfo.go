package bench

import (
	"bytes"
	"context"
	"fmt"
	"strconv"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tally-ledger/tally/ledger"
)

// serverLedger is how a serve's ledger is configured, as its /metrics says
// (tally_ledger_info): what a --target run's results are labelled with and its accounts
// placed by.
type serverLedger struct {
	mode        ledger.Mode
	groupCommit bool
	partitions  int
}

func (s serverLedger) String() string {
	return fmt.Sprintf("%s mode, group commit %v, %d partitions", s.mode, s.groupCommit, s.partitions)
}

// contradicted is the error for a value given for field that the server s does not run.
func (s serverLedger) contradicted(field string, given any) error {
	return invalid(field, "says %v, but the server runs %s", given, s)
}

// serverLedger reads tally_ledger_info from every replica. found is false when one does
// not publish it (a serve older than the metric); replicas that disagree are an error.
func (d *httpDriver) serverLedger(ctx context.Context) (s serverLedger, found bool, err error) {
	for i, base := range d.bases {
		page, err := d.metricsOf(ctx, base)
		if err != nil {
			return serverLedger{}, false, fmt.Errorf("bench: %s: %w", base, err)
		}
		r, ok, err := parseLedgerInfo(page)
		switch {
		case err != nil:
			return serverLedger{}, false, fmt.Errorf("bench: %s/metrics: %w", base, err)
		case !ok:
			return serverLedger{}, false, nil
		case i > 0 && r != s:
			return serverLedger{}, false, fmt.Errorf("bench: the replicas are configured differently: %s runs %s, %s runs %s",
				d.bases[0], s, base, r)
		}
		s = r
	}
	return s, true, nil
}

// parseLedgerInfo reads tally_ledger_info's labels from a Prometheus text page; found is
// false without the metric, and labels it cannot read are an error.
func parseLedgerInfo(page []byte) (s serverLedger, found bool, err error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		return s, false, err
	}
	f := families["tally_ledger_info"]
	if f == nil || len(f.GetMetric()) == 0 {
		return s, false, nil
	}
	labels := map[string]string{}
	for _, lp := range f.GetMetric()[0].GetLabel() {
		labels[lp.GetName()] = lp.GetValue()
	}
	s.mode = ledger.Mode(labels["mode"])
	gc, gcErr := strconv.ParseBool(labels["group_commit"])
	parts, partsErr := strconv.Atoi(labels["partitions"])
	if (s.mode != ledger.ModeOptimistic && s.mode != ledger.ModeLock) || gcErr != nil || partsErr != nil || parts < 1 {
		return s, false, fmt.Errorf("tally_ledger_info has labels %v, not a mode, a group commit setting and a partition count", labels)
	}
	s.groupCommit, s.partitions = gc, parts
	return s, true, nil
}
