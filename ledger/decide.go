package ledger

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tally-ledger/tally/outbox"
)

// command is one request against one account: a pure decision from state to events.
type command interface {
	// target returns the account the command writes to.
	target() string
	// decide emits the command's events through d (which applies them to d's state) and
	// returns the response body, or a domain error. It must not touch anything else.
	decide(d *decision) (any, error)
}

// decision accumulates the events of one command on top of a working copy of the state.
type decision struct {
	acc    *Account
	now    time.Time
	events []Event
}

// decide runs cmd against a copy of acc. It returns the new state, the events and the
// response body, or a domain error with acc untouched.
func decide(cmd command, acc *Account, now time.Time) (*Account, []Event, any, error) {
	d := &decision{acc: acc.clone(), now: now}
	body, err := cmd.decide(d)
	if err != nil {
		return nil, nil, nil, err
	}
	return d.acc, d.events, body, nil
}

// emit appends an event of type typ with data to the decision and applies it.
func (d *decision) emit(typ string, data any) (Event, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("ledger: encode %s: %w", typ, err)
	}
	v := d.acc.Version + 1
	e := Event{
		ID:      outbox.EventID(d.acc.ID, v),
		Type:    typ,
		Account: d.acc.ID,
		Version: v,
		Time:    d.now.UTC(),
		Data:    raw,
	}
	if err := d.acc.apply(e); err != nil {
		return Event{}, err
	}
	d.events = append(d.events, e)
	return e, nil
}

// OpenAccount is the command to open an account.
type OpenAccount struct {
	ID            string
	AllowNegative bool
	Metadata      map[string]string
}

func (c OpenAccount) target() string { return c.ID }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c OpenAccount) Validate() error {
	if err := ValidateID("id", c.ID); err != nil {
		return err
	}
	if len(c.Metadata) > 32 {
		return invalidf("metadata has at most 32 entries")
	}
	for k, v := range c.Metadata {
		if len(k) == 0 || len(k) > 64 || len(v) > 512 {
			return invalidf("metadata keys are 1 to 64 bytes, values at most 512 bytes")
		}
	}
	return nil
}

func (c OpenAccount) decide(d *decision) (any, error) {
	if d.acc.exists() {
		return nil, ErrAccountExists
	}
	d.acc.ID = c.ID
	if _, err := d.emit(EventAccountOpened, OpenedData{AllowNegative: c.AllowNegative, Metadata: c.Metadata}); err != nil {
		return nil, err
	}
	return d.acc.clone(), nil
}

// Deposit is the command to add money to an account.
type Deposit struct {
	Account  string
	Currency string
	Amount   int64
}

func (c Deposit) target() string { return c.Account }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c Deposit) Validate() error { return validateMoney(c.Account, c.Currency, c.Amount) }

func (c Deposit) decide(d *decision) (any, error) {
	if !d.acc.exists() {
		return nil, ErrAccountNotFound
	}
	return d.moneyEvent(EventDeposited, c.Currency, c.Amount)
}

// Withdraw is the command to take money out of an account. Unless the account allows a
// negative balance, the available balance (posted minus held) must cover the amount.
type Withdraw struct {
	Account  string
	Currency string
	Amount   int64
}

func (c Withdraw) target() string { return c.Account }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c Withdraw) Validate() error { return validateMoney(c.Account, c.Currency, c.Amount) }

func (c Withdraw) decide(d *decision) (any, error) {
	if !d.acc.exists() {
		return nil, ErrAccountNotFound
	}
	if avail := d.acc.Balances[c.Currency].Available; !d.acc.AllowNegative && avail < c.Amount {
		return nil, fmt.Errorf("%w: %d %s available, %d requested", ErrInsufficientFunds, avail, c.Currency, c.Amount)
	}
	return d.moneyEvent(EventWithdrawn, c.Currency, c.Amount)
}

// OperationResult is the response of a deposit or withdrawal.
type OperationResult struct {
	OperationID string   `json:"operation_id"`
	Account     *Account `json:"account"`
}

func (d *decision) moneyEvent(typ, currency string, amount int64) (any, error) {
	opID := outbox.EventID(d.acc.ID, d.acc.Version+1)
	if _, err := d.emit(typ, MoneyData{OperationID: opID, Currency: currency, Amount: amount}); err != nil {
		return nil, err
	}
	return OperationResult{OperationID: opID, Account: d.acc.clone()}, nil
}

func validateMoney(account, currency string, amount int64) error {
	if err := ValidateID("account", account); err != nil {
		return err
	}
	if err := ValidateCurrency(currency); err != nil {
		return err
	}
	return validateAmount(amount)
}
