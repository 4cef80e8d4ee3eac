package ledger

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"
)

// command is one request: a pure decision from the state of its accounts to events.
type command interface {
	// accounts returns the accounts the command reads and writes, all in one partition.
	// The first decides the partition whose queue the command waits in.
	accounts() []string
	// decide emits the command's events through d (which applies them to d's state) and
	// returns the response body, or a domain error. It must not touch anything else.
	decide(d *decision) (any, error)
}

// decision accumulates the events and writes of commands on top of working copies of the
// accounts they touch. Commands of one batch decide one after another on one decision; each
// runs on a fork that is merged only when it succeeds, so a rejected command leaves no trace.
type decision struct {
	keys    keyspace
	now     time.Time
	idemTTL time.Duration // how long client idempotency records are kept
	accs    map[string]*Account
	events  map[string][]Event // per account, in version order
	writes  []write
	guards  []string
	tr      transitions // counted in the metrics once the commit succeeded
	// placed names the hold records known to exist: probed with the snapshots (see prober),
	// or placed by this decision. A fork has a copy, merged back on success.
	placed map[string]bool
}

// prober is a command whose decision needs to know whether records outside its accounts'
// snapshots exist: a capture or void of a hold that is not pending tells "never placed"
// (404) from "already resolved" (409). The write path reads them in the same round trip
// as the snapshots, before them; they are written only with a change of their account's
// version, so the commit's version check covers what the decision read.
type prober interface {
	probes(k keyspace) []string
}

// preparer is a command that claims a name and reads outside its partition in the round
// trip of its read, before it decides: a transfer (see transferPrep). Its prepare returns nil
// when it has nothing to do there.
type preparer interface {
	prepare() *transferPrep
}

func newDecision(keys keyspace, now time.Time, idemTTL time.Duration, accs map[string]*Account) *decision {
	return &decision{keys: keys, now: now, idemTTL: idemTTL, accs: accs, events: map[string][]Event{}}
}

// fork returns a decision over copies of the accounts ids, the only accounts a command
// may read: a fork costs what its command touches, not what the batch holds.
func (d *decision) fork(ids []string) *decision {
	f := &decision{keys: d.keys, now: d.now, idemTTL: d.idemTTL, accs: make(map[string]*Account, len(ids)), events: map[string][]Event{},
		placed: maps.Clone(d.placed)}
	for _, id := range ids {
		if a, ok := d.accs[id]; ok {
			f.accs[id] = a.clone()
		}
	}
	return f
}

// merge takes over the state, events and writes of a successful fork.
func (d *decision) merge(f *decision) {
	for id, a := range f.accs {
		d.accs[id] = a
	}
	for id, evs := range f.events {
		d.events[id] = append(d.events[id], evs...)
	}
	d.writes = append(d.writes, f.writes...)
	d.guards = append(d.guards, f.guards...)
	d.placed = f.placed
	d.tr.transfersCreated += f.tr.transfersCreated
	d.tr.transfersCompleted += f.tr.transfersCompleted
	d.tr.transfersRefunded += f.tr.transfersRefunded
}

// acc returns the working copy of account id (version 0 when it does not exist).
func (d *decision) acc(id string) *Account {
	a, ok := d.accs[id]
	if !ok {
		// A command only reads the accounts it names; reaching here is a bug.
		panic(fmt.Sprintf("ledger: decision reads account %q it did not name", id))
	}
	return a
}

// open returns the working copy of an existing, open account, or the domain error.
func (d *decision) open(id string) (*Account, error) {
	a := d.acc(id)
	switch {
	case !a.exists():
		return nil, fmt.Errorf("%w: %s", ErrAccountNotFound, id)
	case a.closed():
		return nil, fmt.Errorf("%w: %s", ErrAccountClosed, id)
	}
	return a, nil
}

// emit appends an event of type typ with data to account a and applies it.
func (d *decision) emit(a *Account, typ string, data any) (Event, error) {
	raw, err := encodeData(data)
	if err != nil {
		return Event{}, fmt.Errorf("ledger: encode %s: %w", typ, err)
	}
	v := a.Version + 1
	at := d.now.UTC()
	if at.UnixNano() < a.last {
		// This process's clock is behind the one that wrote the last event: keep the
		// stream's times in order (see Account.last).
		at = time.Unix(0, a.last).UTC()
	}
	e := Event{
		ID:      EventID(a.ID, v),
		Type:    typ,
		Account: a.ID,
		Version: v,
		Time:    at,
		Data:    raw,
	}
	if err := a.applyData(e, data); err != nil {
		return Event{}, err
	}
	a.settle(at)
	e.Balances = maps.Clone(a.Balances) // never nil: apply made the map
	if !at.Equal(d.now) {
		a.settle(d.now) // the decision goes on at its own time
	}
	d.events[a.ID] = append(d.events[a.ID], e)
	return e, nil
}

// write adds an extra write to the commit.
func (d *decision) write(cmd, key string, args ...any) {
	d.writes = append(d.writes, write{cmd: cmd, key: key, args: args})
}

// guard makes the commit fail with ErrResourceExists if key exists.
func (d *decision) guard(key string) { d.guards = append(d.guards, key) }

// requireAvailable returns ErrInsufficientFunds unless a may spend amount of currency:
// any amount with allow_negative, else as long as the available balance stays at or above
// −overdraft limit (0 without one). Every spending decision (withdrawal, hold, transfer
// debit) calls it on the state it commits with, so the limit holds under concurrency.
func requireAvailable(a *Account, currency string, amount int64) error {
	if a.AllowNegative {
		return nil
	}
	avail, limit := a.Balances[currency].Available, a.OverdraftLimit[currency]
	// limit ≥ 0, so the sum can only overflow upwards: then there is plenty to spend.
	if spendable, err := add(avail, limit); err == nil && spendable < amount {
		if limit > 0 {
			return fmt.Errorf("%w: %d %s available with an overdraft limit of %d, %d requested", ErrInsufficientFunds, avail, currency, limit, amount)
		}
		return fmt.Errorf("%w: %d %s available, %d requested", ErrInsufficientFunds, avail, currency, amount)
	}
	return nil
}

// OpenAccount is the command to open an account.
type OpenAccount struct {
	ID             string
	AllowNegative  bool
	Metadata       map[string]string
	OverdraftLimit map[string]int64 `json:",omitempty"` // per currency, 0 means none; omitempty keeps older fingerprints
}

func (c OpenAccount) accounts() []string { return []string{c.ID} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c OpenAccount) Validate() error {
	if err := ValidateID("id", c.ID); err != nil {
		return err
	}
	if err := validateLimits(c.OverdraftLimit); err != nil {
		return err
	}
	return validateMetadata(c.Metadata)
}

func validateMetadata(md map[string]string) error {
	if len(md) > 32 {
		return invalidf("metadata has at most 32 entries")
	}
	for k, v := range md {
		if len(k) == 0 || len(k) > 64 || len(v) > 512 {
			return invalidf("metadata keys are 1 to 64 bytes, values at most 512 bytes")
		}
	}
	return nil
}

func (c OpenAccount) decide(d *decision) (any, error) {
	a := d.acc(c.ID)
	if a.exists() {
		return nil, ErrAccountExists
	}
	if _, err := d.emit(a, EventAccountOpened, OpenedData{AllowNegative: c.AllowNegative, Metadata: c.Metadata, OverdraftLimit: positiveLimits(c.OverdraftLimit)}); err != nil {
		return nil, err
	}
	d.indexMetadata(d.keys.partition(c.ID), indexAccounts, c.ID, c.Metadata) // see lookup.go
	return a.clone(), nil
}

// Deposit is the command to add money to an account.
type Deposit struct {
	Account  string
	Currency string
	Amount   int64
}

func (c Deposit) accounts() []string { return []string{c.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c Deposit) Validate() error { return validateMoney(c.Account, c.Currency, c.Amount) }

func (c Deposit) decide(d *decision) (any, error) {
	a, err := d.open(c.Account)
	if err != nil {
		return nil, err
	}
	return d.moneyEvent(a, EventDeposited, c.Currency, c.Amount)
}

// Withdraw is the command to take money out of an account. Unless the account allows a
// negative balance, the available balance (posted minus held) must cover the amount.
type Withdraw struct {
	Account  string
	Currency string
	Amount   int64
}

func (c Withdraw) accounts() []string { return []string{c.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c Withdraw) Validate() error { return validateMoney(c.Account, c.Currency, c.Amount) }

func (c Withdraw) decide(d *decision) (any, error) {
	a, err := d.open(c.Account)
	if err != nil {
		return nil, err
	}
	if err := requireAvailable(a, c.Currency, c.Amount); err != nil {
		return nil, err
	}
	return d.moneyEvent(a, EventWithdrawn, c.Currency, c.Amount)
}

// OperationResult is the response of a deposit or withdrawal.
type OperationResult struct {
	OperationID string   `json:"operation_id"`
	Account     *Account `json:"account"`
}

// appendJSON appends r's JSON to b: the bytes json.Marshal(r) gives.
func (r OperationResult) appendJSON(b []byte) []byte {
	b = appendJSONString(append(b, `{"operation_id":`...), r.OperationID)
	return append(r.Account.appendJSON(append(b, `,"account":`...)), '}')
}

// encodeBody returns a response body's JSON: without reflection for the bodies of the most
// frequent writes (deposits and withdrawals) and for an atomic batch's list of responses
// (each already encoded by encodeBody: json.Marshal would only check and compact them
// again), json.Marshal for the others.
func encodeBody(body any) ([]byte, error) {
	switch r := body.(type) {
	case OperationResult:
		return r.appendJSON(make([]byte, 0, 256)), nil
	case []json.RawMessage:
		n := 2
		for _, e := range r {
			n += len(e) + 1
		}
		b := append(make([]byte, 0, n), '[')
		for i, e := range r {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, e...)
		}
		return append(b, ']'), nil
	}
	return json.Marshal(body)
}

func (d *decision) moneyEvent(a *Account, typ, currency string, amount int64) (any, error) {
	opID := EventID(a.ID, a.Version+1)
	if _, err := d.emit(a, typ, MoneyData{OperationID: opID, Currency: currency, Amount: amount}); err != nil {
		return nil, err
	}
	return OperationResult{OperationID: opID, Account: a.clone()}, nil
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

// CloseAccount is the command to close an account. Every posted amount must be zero and no
// hold may be pending; holds that expired but were not swept yet are expired first.
type CloseAccount struct {
	Account string
}

func (c CloseAccount) accounts() []string { return []string{c.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c CloseAccount) Validate() error { return ValidateID("account", c.Account) }

func (c CloseAccount) decide(d *decision) (any, error) {
	a, err := d.open(c.Account)
	if err != nil {
		return nil, err
	}
	for _, cur := range a.currencies() {
		if b := a.Balances[cur]; b.Posted != 0 || b.Held != 0 {
			return nil, fmt.Errorf("%w: %s posted %d, held %d", ErrAccountNotEmpty, cur, b.Posted, b.Held)
		}
	}
	for _, id := range a.holds.ids() {
		if err := d.expireHold(a, id); err != nil {
			return nil, err
		}
	}
	if _, err := d.emit(a, EventAccountClosed, struct{}{}); err != nil {
		return nil, err
	}
	return a.clone(), nil
}
