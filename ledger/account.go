package ledger

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/tally-ledger/tally/outbox"
)

// Event types of an account's stream (DESIGN §8).
const (
	EventAccountOpened = "AccountOpened"
	EventDeposited     = "Deposited"
	EventWithdrawn     = "Withdrawn"
)

// Balance is an account's money in one currency, in integer minor units.
type Balance struct {
	Posted    int64 `json:"posted"`
	Held      int64 `json:"held"`
	Available int64 `json:"available"`
}

// Account is the snapshot of an account at a version: the state every decision is made on.
type Account struct {
	ID            string             `json:"id"`
	Version       int64              `json:"version"`
	AllowNegative bool               `json:"allow_negative"`
	Metadata      map[string]string  `json:"metadata,omitempty"`
	Balances      map[string]Balance `json:"balances"`
}

// exists reports whether the account has been opened.
func (a *Account) exists() bool { return a.Version > 0 }

// clone returns a deep copy, so a decision can be abandoned without touching the original.
func (a *Account) clone() *Account {
	c := *a
	c.Balances = make(map[string]Balance, len(a.Balances))
	for k, v := range a.Balances {
		c.Balances[k] = v
	}
	if a.Metadata != nil {
		c.Metadata = make(map[string]string, len(a.Metadata))
		for k, v := range a.Metadata {
			c.Metadata[k] = v
		}
	}
	return &c
}

// Event is one entry of an account's event stream; it travels unchanged through the outbox.
type Event = outbox.Event

// OpenedData is the data of an AccountOpened event.
type OpenedData struct {
	AllowNegative bool              `json:"allow_negative"`
	Metadata      map[string]string `json:"metadata,omitempty"`
}

// MoneyData is the data of Deposited and Withdrawn events.
type MoneyData struct {
	OperationID string `json:"operation_id"`
	Currency    string `json:"currency"`
	Amount      int64  `json:"amount"`
}

// apply returns the error of applying e to a (in place). It is the single definition of how
// events change state, used by decisions and by replay alike.
func (a *Account) apply(e Event) error {
	if e.Version != a.Version+1 {
		return fmt.Errorf("ledger: event %s has version %d, account is at %d", e.ID, e.Version, a.Version)
	}
	switch e.Type {
	case EventAccountOpened:
		var d OpenedData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return fmt.Errorf("ledger: decode %s: %w", e.ID, err)
		}
		a.AllowNegative, a.Metadata = d.AllowNegative, d.Metadata
		if a.Balances == nil {
			a.Balances = map[string]Balance{}
		}
	case EventDeposited, EventWithdrawn:
		var d MoneyData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return fmt.Errorf("ledger: decode %s: %w", e.ID, err)
		}
		b := a.Balances[d.Currency]
		var err error
		if e.Type == EventDeposited {
			b.Posted, err = add(b.Posted, d.Amount)
		} else {
			b.Posted, err = sub(b.Posted, d.Amount)
		}
		if err != nil {
			return err
		}
		b.Available = b.Posted - b.Held
		a.Balances[d.Currency] = b
	default:
		return fmt.Errorf("ledger: unknown event type %q", e.Type)
	}
	a.Version = e.Version
	return nil
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
