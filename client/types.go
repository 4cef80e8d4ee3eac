package client

import (
	"encoding/json"
	"time"
)

// Balance is an account's money in one currency, in integer minor units. Available is
// Posted − Held; Held counts the holds pending (and not expired) when it was read.
type Balance struct {
	Posted    int64 `json:"posted"`
	Held      int64 `json:"held"`
	Available int64 `json:"available"`
}

// Account statuses.
const (
	AccountOpen   = "open"
	AccountClosed = "closed"
)

// Account is an account's snapshot at Version (the number of its last event).
type Account struct {
	ID            string             `json:"id"`
	Version       int64              `json:"version"`
	Status        string             `json:"status"` // AccountOpen or AccountClosed
	AllowNegative bool               `json:"allow_negative"`
	Metadata      map[string]string  `json:"metadata,omitempty"`
	Balances      map[string]Balance `json:"balances"` // by currency
	// OverdraftLimit is, per currency, how far below zero the available balance may go
	// (only limits above 0; see Client.SetOverdraftLimit).
	OverdraftLimit map[string]int64 `json:"overdraft_limit,omitempty"`
}

// OpenAccountRequest is the body of OpenAccount.
type OpenAccountRequest struct {
	// ID is the caller's own ID for the account: ^[A-Za-z0-9._-]{1,64}$. Required.
	ID string `json:"id"`
	// AllowNegative lets the posted balance go below zero.
	AllowNegative bool `json:"allow_negative,omitempty"`
	// Metadata is stored with the account (at most 32 entries).
	Metadata map[string]string `json:"metadata,omitempty"`
	// OverdraftLimit lets the available balance of a currency go down to −limit.
	OverdraftLimit map[string]int64 `json:"overdraft_limit,omitempty"`
}

// AlertRequest is the body of CreateAlert: exactly one of Below and Above.
type AlertRequest struct {
	ID       string `json:"id,omitempty"` // unique per account; "" for a random one
	Currency string `json:"currency"`
	// Below fires when a commit takes the available balance from ≥ *Below to < *Below.
	Below *int64 `json:"below,omitempty"`
	// Above fires when a commit takes the available balance from ≤ *Above to > *Above.
	Above *int64 `json:"above,omitempty"`
}

// Alert is a threshold alert of an account.
type Alert struct {
	ID       string `json:"id"`
	Account  string `json:"account"`
	Currency string `json:"currency"`
	Below    *int64 `json:"below,omitempty"`
	Above    *int64 `json:"above,omitempty"`
}

// AlertsPage is the answer of Alerts: every alert of the account.
type AlertsPage struct {
	Alerts []Alert `json:"alerts"`
}

// BalanceAlertData is the Data of a BalanceAlert event: the commit ending with event
// EventID (Version) took the available balance across the alert's threshold.
type BalanceAlertData struct {
	AlertID         string `json:"alert_id"`
	Currency        string `json:"currency"`
	Direction       string `json:"direction"` // "below" or "above"
	Threshold       int64  `json:"threshold"`
	AvailableBefore int64  `json:"available_before"`
	AvailableAfter  int64  `json:"available_after"`
	EventID         string `json:"event_id"`
	Version         int64  `json:"version"`
}

// Operation is the answer to a deposit or withdrawal: the event it appended and the account
// after it.
type Operation struct {
	// OperationID is the ID of the event the operation appended: "<account>:<version>".
	OperationID string  `json:"operation_id"`
	Account     Account `json:"account"`
}

// Event types.
const (
	EventAccountOpened    = "AccountOpened"
	EventDeposited        = "Deposited"
	EventWithdrawn        = "Withdrawn"
	EventTransferDebited  = "TransferDebited"
	EventTransferCredited = "TransferCredited"
	EventTransferRefunded = "TransferRefunded"
	EventHoldPlaced       = "HoldPlaced"
	EventHoldCaptured     = "HoldCaptured"
	EventHoldVoided       = "HoldVoided"
	EventHoldExpired      = "HoldExpired"
	EventAccountClosed    = "AccountClosed"

	EventOverdraftLimitSet = "OverdraftLimitSet"
	EventAlertCreated      = "AlertCreated"
	EventAlertDeleted      = "AlertDeleted"
	EventBalanceAlert      = "BalanceAlert"
)

// Event is one event of an account's stream; Version counts from 1 without gaps.
type Event struct {
	ID      string    `json:"id"`
	Type    string    `json:"type"` // one of the Event* constants
	Account string    `json:"account"`
	Version int64     `json:"version"`
	Time    time.Time `json:"time"`
	// Data is the type's data as the server wrote it, e.g. {"operation_id","currency",
	// "amount"} for Deposited; decode it into your own type.
	Data json.RawMessage `json:"data"`
	// Balances are the account's balances right after the event, settled at Time ({}
	// before any currency; nil on events written before the server recorded them).
	Balances map[string]Balance `json:"balances,omitzero"`
}

// PastBalances are an account's balances after one of its events (Client.BalancesAt).
type PastBalances struct {
	Account  string             `json:"account"`
	Version  int64              `json:"version"` // the event the balances are after
	Time     time.Time          `json:"time"`    // its time: Held counts the holds pending then
	Balances map[string]Balance `json:"balances"`
}

// EventsPage is one page of an account's events.
type EventsPage struct {
	Events []Event `json:"events"`
	// Next is the After of the next page; nil on the last page.
	Next *int64 `json:"next"`
}

// Transfer statuses.
const (
	TransferPending   = "pending"   // cross-partition and not finished yet (202)
	TransferCompleted = "completed" // the money arrived
	TransferRefunded  = "refunded"  // the destination refused the credit; the source got it back
)

// TransferRequest is the body of CreateTransfer.
type TransferRequest struct {
	// ID names the transfer and is its idempotency key (kept for good). Empty: the call's
	// Idempotency-Key names it (a generated one unless WithIdempotencyKey gives one).
	ID       string            `json:"id,omitempty"`
	From     string            `json:"from"`
	To       string            `json:"to"`
	Currency string            `json:"currency"`
	Amount   int64             `json:"amount"` // minor units, > 0
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Transfer is a transfer as it stands.
type Transfer struct {
	ID          string            `json:"id"`
	From        string            `json:"from"`
	To          string            `json:"to"`
	Currency    string            `json:"currency"`
	Amount      int64             `json:"amount"`
	Status      string            `json:"status"`           // TransferPending, TransferCompleted or TransferRefunded
	Reason      string            `json:"reason,omitempty"` // TransferRefunded: why
	HoldID      string            `json:"hold_id,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	CompletedAt *time.Time        `json:"completed_at,omitempty"`
}

// Hold statuses.
const (
	HoldPending  = "pending"
	HoldCaptured = "captured"
	HoldVoided   = "voided"
	HoldExpired  = "expired"
)

// HoldRequest is the body of PlaceHold.
type HoldRequest struct {
	// ID names the hold and is its idempotency key. Empty: the call's Idempotency-Key names
	// it (generated unless WithIdempotencyKey gives one).
	ID       string `json:"id,omitempty"`
	Currency string `json:"currency"`
	Amount   int64  `json:"amount"` // minor units, > 0
	// TimeoutSeconds is how long the hold lasts: 1..7776000 (90 days). Required.
	TimeoutSeconds int64 `json:"timeout_seconds"`
}

// CaptureRequest is the body of CaptureHold.
type CaptureRequest struct {
	// Amount to capture; 0 captures the whole hold. The rest is released.
	Amount int64 `json:"amount,omitempty"`
	// To, when set, receives the captured amount as a transfer (Hold.TransferID).
	To string `json:"to,omitempty"`
}

// Hold is a hold as it stands.
type Hold struct {
	ID         string     `json:"id"`
	Account    string     `json:"account"`
	Currency   string     `json:"currency"`
	Amount     int64      `json:"amount"`
	Status     string     `json:"status"` // HoldPending, HoldCaptured, HoldVoided or HoldExpired
	Captured   int64      `json:"captured,omitempty"`
	To         string     `json:"to,omitempty"`
	TransferID string     `json:"transfer_id,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
}

// HoldsPage is one page of an account's pending holds.
type HoldsPage struct {
	Holds []Hold `json:"holds"`
	// Next is the After of the next page; "" on the last page.
	Next string `json:"next,omitempty"`
}

// Batch operation types.
const (
	OpDeposit    = "deposit"
	OpWithdrawal = "withdrawal"
	OpTransfer   = "transfer"
	OpHold       = "hold"
	OpCapture    = "capture"
	OpVoid       = "void"
)

// BatchOp is one operation of a batch. Which fields apply depends on Type: Account for
// deposits, withdrawals and holds; From, To and Metadata for transfers; TimeoutSeconds for
// holds; Account, Hold, and for a capture an optional Amount (0: the whole hold) and To,
// for captures and voids (no Currency: the hold has one). The server refuses a field that
// does not apply (400).
type BatchOp struct {
	Type           string            `json:"type"` // OpDeposit, OpWithdrawal, OpTransfer, OpHold, OpCapture or OpVoid
	ID             string            `json:"id,omitempty"`
	Account        string            `json:"account,omitempty"`
	From           string            `json:"from,omitempty"`
	To             string            `json:"to,omitempty"`
	Hold           string            `json:"hold,omitempty"` // OpCapture, OpVoid: the hold's ID
	Currency       string            `json:"currency,omitempty"`
	Amount         int64             `json:"amount,omitempty"`
	TimeoutSeconds int64             `json:"timeout_seconds,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
}

// BatchRequest is the body of Batch.
type BatchRequest struct {
	// Atomic: all operations or none, every account in one partition (else
	// ErrBatchNotAtomic). False: each operation on its own.
	Atomic     bool      `json:"atomic"`
	Operations []BatchOp `json:"operations"` // 1..1000
}

// BatchResponse is the answer to Batch: one result per operation, in order.
type BatchResponse struct {
	Atomic  bool          `json:"atomic"`
	Results []BatchResult `json:"results"`
}

// BatchResult is the outcome of one batch operation: the status it would have had alone
// (201, 202 for a pending transfer, or a problem's status) and its body.
type BatchResult struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
}

// Err returns the operation's problem as an *Error (errors.Is works on it as on any call's
// error), or nil when the operation succeeded.
func (r BatchResult) Err() error {
	if r.Status >= 200 && r.Status < 300 {
		return nil
	}
	var p problem
	_ = json.Unmarshal(r.Body, &p)
	return &Error{Status: r.Status, Code: p.Code, Title: p.Title, Detail: p.Detail, Type: p.Type}
}

// Decode decodes a successful operation's body into v: *Operation for deposits and
// withdrawals, *Transfer for transfers, *Hold for holds. A failed operation returns Err().
func (r BatchResult) Decode(v any) error {
	if err := r.Err(); err != nil {
		return err
	}
	return json.Unmarshal(r.Body, v)
}

// PartitionStatus is the delivery state of one outbox partition.
type PartitionStatus struct {
	Partition int    `json:"partition"`
	Owner     string `json:"owner"`    // relay holding the partition's lease; "" when none
	Consumed  bool   `json:"consumed"` // false while no relay ever served the partition
	Length    int64  `json:"length"`   // entries in the outbox stream
	Backlog   int64  `json:"backlog"`  // entries not yet acknowledged
	// OldestAgeSeconds is the age of the oldest entry not yet acknowledged (0 without backlog).
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	Pending          int64   `json:"pending"` // read by the owner, not yet acknowledged
	DeadLetters      int64   `json:"dead_letters"`
}
