package ledger

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

// Account statuses.
const (
	StatusOpen   = "open"
	StatusClosed = "closed"
)

// Balance is an account's money in one currency, in integer minor units. Held counts the
// pending holds that have not expired at the moment the balance was read; Available is
// Posted − Held.
type Balance struct {
	Posted    int64 `json:"posted"`
	Held      int64 `json:"held"`
	Available int64 `json:"available"`
}

// Account is the snapshot of an account at a version: the state every decision is made on.
type Account struct {
	ID            string             `json:"id"`
	Version       int64              `json:"version"`
	Status        string             `json:"status"`
	AllowNegative bool               `json:"allow_negative"`
	Metadata      map[string]string  `json:"metadata,omitempty"`
	Balances      map[string]Balance `json:"balances"`
	// OverdraftLimit lets the available balance of a currency go down to −limit (an account
	// without allow_negative; see requireAvailable). Only limits above 0 are kept.
	OverdraftLimit map[string]int64 `json:"overdraft_limit,omitempty"`

	// alerts are the account's threshold alerts, by ID (see alert.go).
	alerts map[string]Alert

	// last is the time of the account's last event (Unix ns; 0 before the first, or for a
	// snapshot written before it was kept). A decision never dates an event before it, so
	// event times never go back within an account's stream, whatever the clocks of the
	// processes that wrote them (balance history by time depends on it).
	last int64

	// holds are the pending holds (placed, not yet captured, voided or swept), by ID. An
	// expired hold stays here until the sweeper appends HoldExpired, but never counts as
	// held and can never be captured. Copying an Account shares them safely (holdSet).
	holds holdSet
}

// pendingHold is a hold as the account snapshot keeps it.
type pendingHold struct {
	Currency  string
	Amount    int64
	CreatedAt time.Time // millisecond precision, as the HoldPlaced event's time
	ExpiresAt time.Time // millisecond precision
}

// exists reports whether the account has been opened.
func (a *Account) exists() bool { return a.Version > 0 }

// closed reports whether the account has been closed.
func (a *Account) closed() bool { return a.Status == StatusClosed }

// clone returns a deep copy, so a decision can be abandoned without touching the original.
func (a *Account) clone() *Account {
	c := *a
	c.Balances = maps.Clone(a.Balances)
	if c.Balances == nil {
		c.Balances = map[string]Balance{}
	}
	c.Metadata = maps.Clone(a.Metadata)
	c.OverdraftLimit = maps.Clone(a.OverdraftLimit)
	c.alerts = maps.Clone(a.alerts)
	return &c
}

// diff names what differs between a snapshot (a) and its replay (b) ("" when nothing does). It
// compares every field of Account (TestAccountDiffSeesEveryField); the pending holds by
// content, not by how their holdSet is laid out.
func (a *Account) diff(b *Account) string {
	var out []string
	if a.ID != b.ID {
		out = append(out, fmt.Sprintf("id %s vs %s", a.ID, b.ID))
	}
	if a.Version != b.Version {
		out = append(out, fmt.Sprintf("version %d vs %d", a.Version, b.Version))
	}
	if a.Status != b.Status || a.AllowNegative != b.AllowNegative {
		out = append(out, fmt.Sprintf("status %s/allow_negative %v vs %s/%v", a.Status, a.AllowNegative, b.Status, b.AllowNegative))
	}
	curs := map[string]bool{}
	for c := range a.Balances {
		curs[c] = true
	}
	for c := range b.Balances {
		curs[c] = true
	}
	for _, c := range slices.Sorted(maps.Keys(curs)) {
		if x, y := a.Balances[c], b.Balances[c]; x != y {
			out = append(out, fmt.Sprintf("%s posted %d held %d vs %d held %d", c, x.Posted, x.Held, y.Posted, y.Held))
		}
	}
	if !a.holds.equal(b.holds) {
		out = append(out, fmt.Sprintf("%d pending holds vs %d", a.holds.len(), b.holds.len()))
	}
	if !reflect.DeepEqual(a.Metadata, b.Metadata) {
		out = append(out, "metadata")
	}
	if a.last != b.last {
		out = append(out, fmt.Sprintf("last event at %d ns vs %d", a.last, b.last))
	}
	if !reflect.DeepEqual(a.OverdraftLimit, b.OverdraftLimit) {
		out = append(out, fmt.Sprintf("overdraft limits %v vs %v", a.OverdraftLimit, b.OverdraftLimit))
	}
	if !reflect.DeepEqual(a.alerts, b.alerts) {
		out = append(out, fmt.Sprintf("%d alerts vs %d", len(a.alerts), len(b.alerts)))
	}
	return strings.Join(out, "; ")
}

// settle recomputes Held and Available of every currency for the moment now: a pending
// hold whose expiry has passed no longer counts.
func (a *Account) settle(now time.Time) {
	held := a.holds.held(now)
	for _, h := range held {
		if _, ok := a.Balances[h.currency]; !ok {
			a.Balances[h.currency] = Balance{}
		}
	}
	for c, b := range a.Balances {
		b.Held = heldIn(held, c)
		b.Available = b.Posted - b.Held
		a.Balances[c] = b
	}
}

// liveHold returns the pending hold id if it has not expired at now.
func (a *Account) liveHold(id string, now time.Time) (pendingHold, bool) {
	h, ok := a.holds.get(id)
	if !ok || !now.Before(h.ExpiresAt) {
		return pendingHold{}, false
	}
	return h, true
}

// apply returns the error of applying e to a (in place). It is the single definition of how
// events change state, used by decisions and by replay alike. Held and Available are left
// for settle.
func (a *Account) apply(e Event) error { return a.applyData(e, nil) }

// applyData is apply with the event's data as emit has it in hand (nil: decode e.Data): a
// MoneyData or TransferData is used as is instead of being decoded from the JSON emit just
// wrote (encodeData and the decoders agree exactly: TestEncodeDataMatchesJSON,
// FuzzDecodeEvent; replay, which decodes, must reach the same snapshot: tally verify).
func (a *Account) applyData(e Event, data any) error {
	if e.Version != a.Version+1 {
		return fmt.Errorf("ledger: event %s has version %d, account is at %d", e.ID, e.Version, a.Version)
	}
	if a.Balances == nil {
		a.Balances = map[string]Balance{}
	}
	post := func(currency string, delta int64) error {
		b := a.Balances[currency]
		n, err := add(b.Posted, delta)
		if err != nil {
			return err
		}
		b.Posted = n
		a.Balances[currency] = b
		return nil
	}
	switch e.Type {
	case EventAccountOpened:
		var d OpenedData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		a.Status, a.AllowNegative, a.Metadata = StatusOpen, d.AllowNegative, d.Metadata
		a.setLimits(d.OverdraftLimit)
	case EventOverdraftLimitSet:
		var d OverdraftLimitData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		a.setLimits(d.OverdraftLimit)
	case EventAlertCreated:
		var d Alert
		if err := decodeData(e, &d); err != nil {
			return err
		}
		if a.alerts == nil {
			a.alerts = map[string]Alert{}
		}
		a.alerts[d.ID] = d
	case EventAlertDeleted:
		var d AlertDeletedData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		delete(a.alerts, d.AlertID)
		if len(a.alerts) == 0 {
			a.alerts = nil // as a snapshot without alert fields reads
		}
	case EventBalanceAlert:
		// A notice for the outbox: it changes nothing but the version.
	case EventDeposited, EventWithdrawn:
		d, err := dataAs[MoneyData](e, data)
		if err != nil {
			return err
		}
		delta := d.Amount
		if e.Type == EventWithdrawn {
			delta = -delta
		}
		if err := post(d.Currency, delta); err != nil {
			return err
		}
	case EventTransferDebited, EventTransferCredited, EventTransferRefunded:
		d, err := dataAs[TransferData](e, data)
		if err != nil {
			return err
		}
		delta := d.Amount
		if e.Type == EventTransferDebited {
			delta = -delta
		}
		if err := post(d.Currency, delta); err != nil {
			return err
		}
	case EventHoldPlaced:
		var d HoldData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		a.holds.set(d.HoldID, pendingHold{Currency: d.Currency, Amount: d.Amount,
			CreatedAt: time.UnixMilli(e.Time.UnixMilli()).UTC(), ExpiresAt: d.ExpiresAt.UTC()})
		if _, ok := a.Balances[d.Currency]; !ok {
			a.Balances[d.Currency] = Balance{}
		}
	case EventHoldCaptured, EventHoldVoided, EventHoldExpired:
		var d HoldData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		if _, ok := a.holds.get(d.HoldID); !ok {
			return fmt.Errorf("ledger: %s resolves hold %q, which is not pending", e.ID, d.HoldID)
		}
		a.holds.remove(d.HoldID)
		if e.Type == EventHoldCaptured {
			if err := post(d.Currency, -d.Captured); err != nil {
				return err
			}
		}
	case EventAccountClosed:
		a.Status = StatusClosed
	default:
		return fmt.Errorf("ledger: unknown event type %q", e.Type)
	}
	a.Version = e.Version
	a.last = e.Time.UnixNano()
	return nil
}

// setLimits sets the overdraft limits of limits; 0 removes a currency's limit. An account
// without limits has a nil map, as a snapshot without limit fields reads.
func (a *Account) setLimits(limits map[string]int64) {
	for c, n := range limits {
		if n > 0 {
			if a.OverdraftLimit == nil {
				a.OverdraftLimit = map[string]int64{}
			}
			a.OverdraftLimit[c] = n
		} else {
			delete(a.OverdraftLimit, c)
		}
	}
	if len(a.OverdraftLimit) == 0 {
		a.OverdraftLimit = nil
	}
}

// positiveLimits returns the limits above 0 (0 means none), or nil when there are none.
func positiveLimits(limits map[string]int64) map[string]int64 {
	var a Account
	a.setLimits(limits)
	return a.OverdraftLimit
}

// currencies returns the account's currencies in sorted order.
func (a *Account) currencies() []string {
	out := make([]string, 0, len(a.Balances))
	for c := range a.Balances {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}
