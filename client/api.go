package client

import (
	"context"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tally-ledger/tally/internal/backoff"
)

// OpenAccount opens an account (201). It returns ErrAccountExists for a known ID and
// ErrInvalidRequest for a malformed one.
func (c *Client) OpenAccount(ctx context.Context, req OpenAccountRequest, opts ...CallOption) (*Account, error) {
	var a Account
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/accounts", body: req, key: writeKey(opts, "")}, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Account returns an account's snapshot, or ErrAccountNotFound.
func (c *Client) Account(ctx context.Context, id string) (*Account, error) {
	var a Account
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts", id)}, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// EventsOptions selects a page of events.
type EventsOptions struct {
	After int64 // events with a version above After; 0 from the first
	Limit int   // page size 1..1000; 0 for the server's default (100)
}

// Events returns one page of an account's events after opt.After; page.Next is the After of
// the next page (nil on the last). It returns ErrAccountNotFound for an unknown account.
func (c *Client) Events(ctx context.Context, id string, opt EventsOptions) (*EventsPage, error) {
	q := url.Values{"after": {strconv.FormatInt(opt.After, 10)}}
	if opt.Limit > 0 {
		q.Set("limit", strconv.Itoa(opt.Limit))
	}
	var p EventsPage
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts", id, "events"), query: q}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// HistoryPoint names a point of an account's history for BalancesAt: a version, or a
// moment (the last event at or before it). The zero value is the latest event.
type HistoryPoint struct {
	Version int64
	At      time.Time
}

// BalancesAt returns an account's balances after the event at names (every event records
// them). It returns ErrAccountNotFound for an unknown account, ErrNotFound when the
// account has no such version yet or was opened after at.At, and ErrInvalidRequest for
// both a version and a time.
func (c *Client) BalancesAt(ctx context.Context, id string, at HistoryPoint) (*PastBalances, error) {
	q := url.Values{}
	if at.Version != 0 {
		q.Set("at_version", strconv.FormatInt(at.Version, 10))
	}
	if !at.At.IsZero() {
		q.Set("at", at.At.UTC().Format(time.RFC3339Nano))
	}
	var p PastBalances
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts", id, "balances"), query: q}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// AllEvents iterates over an account's events after the version after, page by page
// (pageSize per request; 0 for the server's default). An error ends the iteration after it
// is yielded.
func (c *Client) AllEvents(ctx context.Context, id string, after int64, pageSize int) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		for {
			page, err := c.Events(ctx, id, EventsOptions{After: after, Limit: pageSize})
			if err != nil {
				yield(Event{}, err)
				return
			}
			for _, e := range page.Events {
				if !yield(e, nil) {
					return
				}
			}
			if page.Next == nil || len(page.Events) == 0 {
				return
			}
			after = *page.Next
		}
	}
}

// moneyBody is the body of deposits and withdrawals.
type moneyBody struct {
	Currency string `json:"currency"`
	Amount   int64  `json:"amount"`
}

// Deposit adds amount (minor units, > 0) of currency to an account (201). It returns
// ErrAccountNotFound, ErrAccountClosed, ErrAmountOverflow or ErrInvalidRequest.
func (c *Client) Deposit(ctx context.Context, account, currency string, amount int64, opts ...CallOption) (*Operation, error) {
	return c.money(ctx, account, "deposits", currency, amount, opts)
}

// Withdraw takes amount (minor units, > 0) of currency from an account (201). It returns
// ErrInsufficientFunds (nothing written), ErrAccountNotFound, ErrAccountClosed or
// ErrInvalidRequest.
func (c *Client) Withdraw(ctx context.Context, account, currency string, amount int64, opts ...CallOption) (*Operation, error) {
	return c.money(ctx, account, "withdrawals", currency, amount, opts)
}

func (c *Client) money(ctx context.Context, account, kind, currency string, amount int64, opts []CallOption) (*Operation, error) {
	var op Operation
	r := request{method: http.MethodPost, path: escape("v1", "accounts", account, kind), body: moneyBody{currency, amount}, key: writeKey(opts, "")}
	if err := c.do(ctx, r, &op); err != nil {
		return nil, err
	}
	return &op, nil
}

// CloseAccount closes an account whose every amount is zero and returns it (status
// closed). It returns ErrAccountNotEmpty or ErrAccountNotFound.
func (c *Client) CloseAccount(ctx context.Context, id string, opts ...CallOption) (*Account, error) {
	var a Account
	if err := c.do(ctx, request{method: http.MethodPost, path: escape("v1", "accounts", id, "close"), key: writeKey(opts, "")}, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// CreateTransfer moves money between two accounts. The transfer's Status is
// TransferCompleted (the server answered 201), or TransferPending (202) while a
// cross-partition transfer is on its way: WaitTransfer follows it. The request's ID, when
// set, is the Idempotency-Key. It returns ErrAccountNotFound, ErrAccountClosed,
// ErrInsufficientFunds, ErrIdempotencyKeyReused or ErrInvalidRequest, each with nothing
// written.
func (c *Client) CreateTransfer(ctx context.Context, req TransferRequest, opts ...CallOption) (*Transfer, error) {
	var t Transfer
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/transfers", body: req, key: writeKey(opts, req.ID)}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Transfer returns a transfer as it stands, or ErrNotFound.
func (c *Client) Transfer(ctx context.Context, id string) (*Transfer, error) {
	var t Transfer
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "transfers", id)}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// waitPolicy spaces the polls of WaitTransfer: 50ms doubling to 2s, jittered.
var waitPolicy = backoff.Policy{Base: 50 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.5}

// WaitTransfer polls a transfer, with backoff, until it is no longer pending, and returns
// it (TransferCompleted or TransferRefunded). It returns ctx's error (wrapping the last
// state seen) when ctx ends first, and any error of Transfer.
func (c *Client) WaitTransfer(ctx context.Context, id string) (*Transfer, error) {
	for n := 1; ; n++ {
		t, err := c.Transfer(ctx, id)
		if err != nil {
			return nil, err
		}
		if t.Status != TransferPending {
			return t, nil
		}
		if err := c.wait(ctx, waitPolicy.Delay(n)); err != nil {
			return nil, fmt.Errorf("client: transfer %s still pending: %w", id, context.Cause(ctx))
		}
	}
}

// PlaceHold reserves money on an account until it is captured, voided or expires (201,
// status pending). The request's ID, when set, is the Idempotency-Key. It returns
// ErrInsufficientFunds, ErrAccountNotFound, ErrAccountClosed, ErrIdempotencyKeyReused or
// ErrInvalidRequest.
func (c *Client) PlaceHold(ctx context.Context, account string, req HoldRequest, opts ...CallOption) (*Hold, error) {
	var h Hold
	r := request{method: http.MethodPost, path: escape("v1", "accounts", account, "holds"), body: req, key: writeKey(opts, req.ID)}
	if err := c.do(ctx, r, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// HoldsOptions selects a page of pending holds.
type HoldsOptions struct {
	After string // holds with an ID above After; "" from the first
	Limit int    // page size 1..1000; 0 for the server's default (100)
}

// Holds returns one page of an account's pending holds in ID order, after opt.After;
// page.Next is the After of the next page ("" on the last). Holds past their expiry are
// left out even before the server records them expired. It returns ErrAccountNotFound for
// an unknown account.
func (c *Client) Holds(ctx context.Context, account string, opt HoldsOptions) (*HoldsPage, error) {
	q := url.Values{}
	if opt.After != "" {
		q.Set("after", opt.After)
	}
	if opt.Limit > 0 {
		q.Set("limit", strconv.Itoa(opt.Limit))
	}
	var p HoldsPage
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts", account, "holds"), query: q}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// Hold returns a hold as it stands, or ErrNotFound.
func (c *Client) Hold(ctx context.Context, account, id string) (*Hold, error) {
	var h Hold
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts", account, "holds", id)}, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// CaptureHold captures all of a pending hold (req.Amount 0) or part of it, releasing the
// rest, and returns the hold (status captured). It returns ErrHoldNotPending,
// ErrAmountExceedsHold or ErrNotFound.
func (c *Client) CaptureHold(ctx context.Context, account, id string, req CaptureRequest, opts ...CallOption) (*Hold, error) {
	var h Hold
	r := request{method: http.MethodPost, path: escape("v1", "accounts", account, "holds", id, "capture"), body: req, key: writeKey(opts, "")}
	if err := c.do(ctx, r, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// VoidHold releases a pending hold and returns it (status voided). It returns
// ErrHoldNotPending or ErrNotFound.
func (c *Client) VoidHold(ctx context.Context, account, id string, opts ...CallOption) (*Hold, error) {
	var h Hold
	r := request{method: http.MethodPost, path: escape("v1", "accounts", account, "holds", id, "void"), key: writeKey(opts, "")}
	if err := c.do(ctx, r, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Batch runs several operations in one request (200). Each result carries its own status
// and body (BatchResult.Err, BatchResult.Decode). The whole call fails with
// ErrInvalidRequest for a malformed operation and ErrBatchNotAtomic for an atomic batch
// across partitions. With the (generated or given) Idempotency-Key a retry replays: an
// atomic batch as a whole, otherwise each operation without an ID of its own.
func (c *Client) Batch(ctx context.Context, req BatchRequest, opts ...CallOption) (*BatchResponse, error) {
	var b BatchResponse
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/batch", body: req, key: writeKey(opts, "")}, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// RelayStatus returns the delivery state of every outbox partition.
func (c *Client) RelayStatus(ctx context.Context) ([]PartitionStatus, error) {
	var st struct {
		Partitions []PartitionStatus `json:"partitions"`
	}
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/relay"}, &st); err != nil {
		return nil, err
	}
	return st.Partitions, nil
}

// ReplayDeadLetters moves every dead letter back to its outbox and returns how many. It
// needs an admin key when the server has keys (else ErrForbidden). The operation has no
// idempotency record: when a retry follows a lost answer, the count covers that retry only
// (consumers deduplicate the events either way).
func (c *Client) ReplayDeadLetters(ctx context.Context) (int, error) {
	var out struct {
		Replayed int `json:"replayed"`
	}
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/relay/dead-letters/replay", repeatable: true}, &out); err != nil {
		return 0, err
	}
	return out.Replayed, nil
}

// Health returns nil while the server process answers GET /healthz (retried like any call).
func (c *Client) Health(ctx context.Context) error {
	err := c.do(ctx, request{method: http.MethodGet, path: "/healthz"}, nil)
	return err
}

// Ready returns nil when the server can reach its Redis (GET /readyz), else its error
// (ErrStoreUnavailable). It is a probe: it makes one attempt, without retries.
func (c *Client) Ready(ctx context.Context) error {
	err := c.do(ctx, request{method: http.MethodGet, path: "/readyz", once: true}, nil)
	return err
}

// patchAccountBody is the body of SetOverdraftLimit.
type patchAccountBody struct {
	OverdraftLimit map[string]int64 `json:"overdraft_limit"`
}

// SetOverdraftLimit sets the overdraft limits of the currencies in limits (minor units,
// ≥ 0; 0 removes one; the other currencies keep theirs) and returns the account. The
// available balance may then go down to −limit. A limit below what the account already
// owes is accepted: it only refuses further spending. It returns ErrAccountNotFound,
// ErrAccountClosed, ErrTooManyOverdraftLimits or ErrInvalidRequest.
func (c *Client) SetOverdraftLimit(ctx context.Context, account string, limits map[string]int64, opts ...CallOption) (*Account, error) {
	var a Account
	r := request{method: http.MethodPatch, path: escape("v1", "accounts", account), body: patchAccountBody{limits}, key: writeKey(opts, "")}
	if err := c.do(ctx, r, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// CreateAlert creates a threshold alert on an account's available balance (201): the
// commit that crosses it appends a BalanceAlert event. It returns ErrAlertExists,
// ErrTooManyAlerts, ErrAccountNotFound, ErrAccountClosed or ErrInvalidRequest.
func (c *Client) CreateAlert(ctx context.Context, account string, req AlertRequest, opts ...CallOption) (*Alert, error) {
	var al Alert
	r := request{method: http.MethodPost, path: escape("v1", "accounts", account, "alerts"), body: req, key: writeKey(opts, "")}
	if err := c.do(ctx, r, &al); err != nil {
		return nil, err
	}
	return &al, nil
}

// Alerts returns every alert of an account (at most 20), by ID, or ErrAccountNotFound.
func (c *Client) Alerts(ctx context.Context, account string) ([]Alert, error) {
	var p AlertsPage
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts", account, "alerts")}, &p); err != nil {
		return nil, err
	}
	return p.Alerts, nil
}

// DeleteAlert deletes an alert and returns it. It returns ErrNotFound for an unknown alert,
// ErrAccountNotFound or ErrAccountClosed.
func (c *Client) DeleteAlert(ctx context.Context, account, id string, opts ...CallOption) (*Alert, error) {
	var al Alert
	r := request{method: http.MethodDelete, path: escape("v1", "accounts", account, "alerts", id), key: writeKey(opts, "")}
	if err := c.do(ctx, r, &al); err != nil {
		return nil, err
	}
	return &al, nil
}
