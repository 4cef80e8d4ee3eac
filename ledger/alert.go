package ledger

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Overdraft limits and threshold alerts (docs/limits-and-alerts.md).
//
// Both are account state changed by events, like balances: OverdraftLimitSet (and the
// limits AccountOpened carries) set the limits requireAvailable allows; AlertCreated and
// AlertDeleted keep the alert definitions. A BalanceAlert event is appended by the write
// path, not by a command: emitAlerts runs once after each command's decision succeeded, and
// compares every touched account's available balances before and after it. Crossing is
// decided from those two numbers alone, so an alert needs no "fired" state: it fires again
// once the balance has crossed back.

// Alert directions.
const (
	AlertBelow = "below"
	AlertAbove = "above"
)

// MaxAlerts bounds the alerts of one account; MaxOverdraftLimits the currencies with an
// overdraft limit. Both live in the account snapshot, which every write reads.
const (
	MaxAlerts          = 20
	MaxOverdraftLimits = 16
)

var (
	// ErrAlertExists is returned when creating an alert whose ID the account already has.
	ErrAlertExists = errors.New("alert exists")
	// ErrTooManyAlerts is returned when creating an alert on an account with MaxAlerts.
	ErrTooManyAlerts = errors.New("too many alerts")
	// ErrTooManyOverdraftLimits is returned when a limit would give an account more than
	// MaxOverdraftLimits currencies with a limit.
	ErrTooManyOverdraftLimits = errors.New("too many overdraft limits")
)

// Alert is a threshold alert on an account's available balance in one currency: exactly
// one of Below and Above is set. "below T" fires when a commit takes the available
// balance from ≥ T to < T; "above T" when it takes it from ≤ T to > T.
type Alert struct {
	ID       string `json:"id"`
	Account  string `json:"account"`
	Currency string `json:"currency"`
	Below    *int64 `json:"below,omitempty"`
	Above    *int64 `json:"above,omitempty"`
}

// direction returns the alert's direction and threshold.
func (al Alert) direction() (string, int64) {
	if al.Below != nil {
		return AlertBelow, *al.Below
	}
	return AlertAbove, *al.Above
}

// crossed reports whether a change of the available balance from before to after crosses
// the alert's threshold in its direction.
func (al Alert) crossed(before, after int64) bool {
	dir, t := al.direction()
	if dir == AlertBelow {
		return before >= t && after < t
	}
	return before <= t && after > t
}

// emitAlerts appends a BalanceAlert to every account of f (a command's successful fork of
// base) for each of its alerts whose threshold the command's events crossed: right after
// those events, in the same commit. It is the one place alerts fire; the write path calls
// it once per command, so a request fires an alert at most once per account, whatever
// number of events it appended.
//
// It runs for every request, so an account without alerts costs one map look-up. The
// accounts are taken in any order (each has its own stream); an account's alerts in ID order.
func (f *decision) emitAlerts(base *decision) error {
	for id, evs := range f.events {
		a := f.accs[id]
		if len(a.alerts) == 0 {
			continue
		}
		before, last := base.accs[id], evs[len(evs)-1]
		for _, aid := range slices.Sorted(maps.Keys(a.alerts)) {
			al := a.alerts[aid]
			from, to := before.Balances[al.Currency].Available, a.Balances[al.Currency].Available
			if !al.crossed(from, to) {
				continue
			}
			dir, t := al.direction()
			if _, err := f.emit(a, EventBalanceAlert, BalanceAlertData{AlertID: aid, Currency: al.Currency, Direction: dir,
				Threshold: t, AvailableBefore: from, AvailableAfter: to, EventID: last.ID, Version: last.Version}); err != nil {
				return err
			}
		}
	}
	return nil
}

// validateLimits returns an error wrapping ErrInvalid unless limits names at most
// MaxOverdraftLimits valid currencies, each with a limit ≥ 0.
func validateLimits(limits map[string]int64) error {
	if len(limits) > MaxOverdraftLimits {
		return invalidf("overdraft_limit has at most %d currencies", MaxOverdraftLimits)
	}
	for cur, n := range limits {
		if ValidateCurrency(cur) != nil {
			return invalidf("overdraft_limit keys are currencies: ^[A-Z][A-Z0-9_]{1,15}$")
		}
		if n < 0 {
			return invalidf("overdraft_limit of %s must be an integer ≥ 0 in minor units (0 removes it)", cur)
		}
	}
	return nil
}

// SetOverdraftLimit is the command to set an account's overdraft limits: the currencies it
// names get theirs (0 removes one), the others keep theirs. A limit below what the account
// already owes is allowed: it only refuses further spending.
type SetOverdraftLimit struct {
	Account        string
	OverdraftLimit map[string]int64
}

func (c SetOverdraftLimit) accounts() []string { return []string{c.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c SetOverdraftLimit) Validate() error {
	if err := ValidateID("account", c.Account); err != nil {
		return err
	}
	if len(c.OverdraftLimit) == 0 {
		return invalidf("overdraft_limit must name at least one currency")
	}
	return validateLimits(c.OverdraftLimit)
}

func (c SetOverdraftLimit) decide(d *decision) (any, error) {
	a, err := d.open(c.Account)
	if err != nil {
		return nil, err
	}
	if _, err := d.emit(a, EventOverdraftLimitSet, OverdraftLimitData{OverdraftLimit: c.OverdraftLimit}); err != nil {
		return nil, err
	}
	if len(a.OverdraftLimit) > MaxOverdraftLimits {
		return nil, fmt.Errorf("%w: an account has at most %d currencies with an overdraft limit", ErrTooManyOverdraftLimits, MaxOverdraftLimits)
	}
	return a.clone(), nil
}

// CreateAlert is the command to create a threshold alert. An empty Alert.ID gets a random
// one (the response names it).
type CreateAlert struct {
	Alert Alert
}

func (c CreateAlert) accounts() []string { return []string{c.Alert.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c CreateAlert) Validate() error {
	al := c.Alert
	if err := ValidateID("account", al.Account); err != nil {
		return err
	}
	if al.ID != "" {
		if err := ValidateID("alert id", al.ID); err != nil {
			return err
		}
	}
	if err := ValidateCurrency(al.Currency); err != nil {
		return err
	}
	if (al.Below == nil) == (al.Above == nil) {
		return invalidf("an alert has exactly one of below and above")
	}
	return nil
}

func (c CreateAlert) decide(d *decision) (any, error) {
	a, err := d.open(c.Alert.Account)
	if err != nil {
		return nil, err
	}
	al := c.Alert
	if al.ID == "" {
		al.ID = "al-" + newToken()[:16] // random: the record of the request keeps the answer
	}
	if _, ok := a.alerts[al.ID]; ok {
		return nil, fmt.Errorf("%w: %s", ErrAlertExists, al.ID)
	}
	if len(a.alerts) >= MaxAlerts {
		return nil, fmt.Errorf("%w: an account has at most %d alerts", ErrTooManyAlerts, MaxAlerts)
	}
	if _, err := d.emit(a, EventAlertCreated, al); err != nil {
		return nil, err
	}
	return al, nil
}

// DeleteAlert is the command to delete a threshold alert.
type DeleteAlert struct {
	Account string
	ID      string
}

func (c DeleteAlert) accounts() []string { return []string{c.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c DeleteAlert) Validate() error {
	if err := ValidateID("account", c.Account); err != nil {
		return err
	}
	return ValidateID("alert id", c.ID)
}

func (c DeleteAlert) decide(d *decision) (any, error) {
	a, err := d.open(c.Account)
	if err != nil {
		return nil, err
	}
	al, ok := a.alerts[c.ID]
	if !ok {
		return nil, fmt.Errorf("%w: alert %s of %s", ErrNotFound, c.ID, c.Account)
	}
	if _, err := d.emit(a, EventAlertDeleted, AlertDeletedData{AlertID: c.ID}); err != nil {
		return nil, err
	}
	return al, nil
}

// SetOverdraftLimit sets overdraft limits of an account. It returns the account as JSON,
// ErrAccountNotFound, ErrAccountClosed, ErrTooManyOverdraftLimits, or an error wrapping
// ErrInvalid.
func (l *Ledger) SetOverdraftLimit(ctx context.Context, cmd SetOverdraftLimit, opts WriteOptions) (Receipt, error) {
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// CreateAlert creates a threshold alert. It returns the Alert as JSON, ErrAlertExists,
// ErrTooManyAlerts, ErrAccountNotFound, ErrAccountClosed, or an error wrapping ErrInvalid.
func (l *Ledger) CreateAlert(ctx context.Context, cmd CreateAlert, opts WriteOptions) (Receipt, error) {
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// DeleteAlert deletes a threshold alert. It returns the deleted Alert as JSON, ErrNotFound,
// ErrAccountNotFound, ErrAccountClosed, or an error wrapping ErrInvalid.
func (l *Ledger) DeleteAlert(ctx context.Context, account, id string, opts WriteOptions) (Receipt, error) {
	cmd := DeleteAlert{Account: account, ID: id}
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, cmd, opts)
}

// Alerts returns the alerts of an account (at most MaxAlerts), by ID. It returns
// ErrAccountNotFound or an error wrapping ErrInvalid.
func (l *Ledger) Alerts(ctx context.Context, account string) ([]Alert, error) {
	acc, err := l.Account(ctx, account)
	if err != nil {
		return nil, err
	}
	out := make([]Alert, 0, len(acc.alerts))
	for _, id := range slices.Sorted(maps.Keys(acc.alerts)) {
		out = append(out, acc.alerts[id])
	}
	return out, nil
}
