package client

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

// requireAPIError checks that err is an *Error with status and code, matched by sentinel.
func requireAPIError(t *testing.T, err error, status int, want error) *Error {
	t.Helper()
	require.Error(t, err)
	var apiErr *Error
	require.True(t, errors.As(err, &apiErr), "want *client.Error, got %T: %v", err, err)
	assert.Equal(t, status, apiErr.Status, "%v", err)
	require.ErrorIs(t, err, want)
	assert.Equal(t, want.(*sentinel).code, apiErr.Code)
	assert.Equal(t, "https://tally.dev/problems/"+apiErr.Code, apiErr.Type)
	assert.NotEmpty(t, apiErr.Title)
	return apiErr
}

// TestAccounts: open, read, deposit, withdraw, page through events and close through the
// client, and each refusal arrives as the sentinel of its code.
func TestAccounts(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	c, _ := newClient(t, s.URL)

	acc, err := c.OpenAccount(ctx, OpenAccountRequest{ID: "alice", Metadata: map[string]string{"tier": "gold"}})
	require.NoError(t, err)
	assert.Equal(t, Account{ID: "alice", Version: 1, Status: AccountOpen, Metadata: map[string]string{"tier": "gold"}, Balances: map[string]Balance{}}, *acc)
	_, err = c.OpenAccount(ctx, OpenAccountRequest{ID: "alice"})
	requireAPIError(t, err, http.StatusConflict, ErrAccountExists)
	_, err = c.OpenAccount(ctx, OpenAccountRequest{ID: "not valid!"})
	e := requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)
	assert.Contains(t, e.Detail, "id")

	op, err := c.Deposit(ctx, "alice", "USD", 1500)
	require.NoError(t, err)
	assert.Equal(t, "alice:2", op.OperationID)
	assert.Equal(t, Balance{Posted: 1500, Available: 1500}, op.Account.Balances["USD"])
	_, err = c.Deposit(ctx, "alice", "USD", 0)
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)
	_, err = c.Deposit(ctx, "nobody", "USD", 1)
	requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)

	_, err = c.Withdraw(ctx, "alice", "USD", 5000)
	e = requireAPIError(t, err, http.StatusUnprocessableEntity, ErrInsufficientFunds)
	assert.Equal(t, "insufficient funds: 1500 USD available, 5000 requested", e.Detail)
	require.NotEmpty(t, e.RequestID, "the server's X-Request-ID")
	assert.Equal(t, "tally: 422 insufficient_funds: insufficient funds: 1500 USD available, 5000 requested (request "+e.RequestID+")", e.Error())
	op, err = c.Withdraw(ctx, "alice", "USD", 500)
	require.NoError(t, err)
	assert.Equal(t, int64(1000), op.Account.Balances["USD"].Posted)

	past, err := c.BalancesAt(ctx, "alice", HistoryPoint{Version: 2})
	require.NoError(t, err)
	assert.Equal(t, map[string]Balance{"USD": {Posted: 1500, Available: 1500}}, past.Balances)
	at, err := c.BalancesAt(ctx, "alice", HistoryPoint{At: past.Time})
	require.NoError(t, err)
	assert.Equal(t, *past, *at)
	latest, err := c.BalancesAt(ctx, "alice", HistoryPoint{})
	require.NoError(t, err)
	assert.Equal(t, int64(3), latest.Version)
	_, err = c.BalancesAt(ctx, "alice", HistoryPoint{Version: 9})
	requireAPIError(t, err, http.StatusNotFound, ErrNotFound)
	_, err = c.BalancesAt(ctx, "alice", HistoryPoint{Version: 1, At: past.Time})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)

	acc, err = c.Account(ctx, "alice")
	require.NoError(t, err)
	assert.Equal(t, int64(3), acc.Version)
	assert.Equal(t, Balance{Posted: 1000, Available: 1000}, acc.Balances["USD"])
	_, err = c.Account(ctx, "nobody")
	requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)

	// A caller's own key: the same deposit again replays and applies nothing.
	for range 2 {
		op, err = c.Deposit(ctx, "alice", "USD", 7, WithIdempotencyKey("dep-7"))
		require.NoError(t, err)
		assert.Equal(t, "alice:4", op.OperationID)
	}
	_, err = c.Deposit(ctx, "alice", "USD", 8, WithIdempotencyKey("dep-7"))
	requireAPIError(t, err, http.StatusConflict, ErrIdempotencyKeyReused)

	page, err := c.Events(ctx, "alice", EventsOptions{Limit: 3})
	require.NoError(t, err)
	require.Len(t, page.Events, 3)
	require.NotNil(t, page.Next)
	assert.Equal(t, []string{EventAccountOpened, EventDeposited, EventWithdrawn}, types(page.Events))
	assert.Equal(t, int64(3), *page.Next)
	assert.JSONEq(t, `{"operation_id":"alice:2","currency":"USD","amount":1500}`, string(page.Events[1].Data))
	page, err = c.Events(ctx, "alice", EventsOptions{After: *page.Next, Limit: 3})
	require.NoError(t, err)
	assert.Equal(t, []string{EventDeposited}, types(page.Events))
	assert.Nil(t, page.Next)
	_, err = c.Events(ctx, "alice", EventsOptions{Limit: 5000})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)
	_, err = c.Events(ctx, "nobody", EventsOptions{})
	requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)

	var all []Event
	for e, err := range c.AllEvents(ctx, "alice", 0, 2) {
		require.NoError(t, err)
		all = append(all, e)
	}
	assert.Equal(t, []string{EventAccountOpened, EventDeposited, EventWithdrawn, EventDeposited}, types(all))
	for i, e := range all {
		assert.Equal(t, int64(i+1), e.Version)
	}
	for _, err := range c.AllEvents(ctx, "nobody", 0, 0) {
		requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)
	}

	_, err = c.CloseAccount(ctx, "alice")
	requireAPIError(t, err, http.StatusConflict, ErrAccountNotEmpty)
	_, err = c.Withdraw(ctx, "alice", "USD", 1007)
	require.NoError(t, err)
	acc, err = c.CloseAccount(ctx, "alice")
	require.NoError(t, err)
	assert.Equal(t, AccountClosed, acc.Status)
	_, err = c.Deposit(ctx, "alice", "USD", 1)
	requireAPIError(t, err, http.StatusConflict, ErrAccountClosed)
}

func types(events []Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Type
	}
	return out
}

// mustOpen opens accounts and deposits amount USD into each (none when 0).
func mustOpen(t *testing.T, c *Client, amount int64, ids ...string) {
	t.Helper()
	for _, id := range ids {
		_, err := c.OpenAccount(context.Background(), OpenAccountRequest{ID: id})
		require.NoError(t, err)
		if amount > 0 {
			_, err = c.Deposit(context.Background(), id, "USD", amount)
			require.NoError(t, err)
		}
	}
}

// posted returns an account's posted USD.
func posted(t *testing.T, c *Client, id string) int64 {
	t.Helper()
	a, err := c.Account(context.Background(), id)
	require.NoError(t, err)
	return a.Balances["USD"].Posted
}

// TestTransfers: same- and cross-partition transfers complete (201), a transfer's ID is its
// idempotency key, a transfer without an ID is named by the generated key, and refusals are
// sentinels.
func TestTransfers(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	c, _ := newClient(t, s.URL)
	far := s.otherPartition(t, "shop1..alice", "far")
	mustOpen(t, c, 10000, "shop1..alice")
	mustOpen(t, c, 0, "shop1..bob", far)

	req := TransferRequest{ID: "tr-1", From: "shop1..alice", To: "shop1..bob", Currency: "USD", Amount: 2500, Metadata: map[string]string{"order": "42"}}
	tr, err := c.CreateTransfer(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, TransferCompleted, tr.Status)
	assert.Equal(t, "tr-1", tr.ID)
	assert.Equal(t, map[string]string{"order": "42"}, tr.Metadata)
	require.NotNil(t, tr.CompletedAt)
	again, err := c.CreateTransfer(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, tr, again, "the same ID replays")
	req.Amount = 9999
	_, err = c.CreateTransfer(ctx, req)
	requireAPIError(t, err, http.StatusConflict, ErrIdempotencyKeyReused)

	cross, err := c.CreateTransfer(ctx, TransferRequest{From: "shop1..alice", To: far, Currency: "USD", Amount: 1000})
	require.NoError(t, err)
	assert.Equal(t, TransferCompleted, cross.Status)
	assert.Regexp(t, `^[0-9a-f]{32}$`, cross.ID, "named by the generated Idempotency-Key")
	got, err := c.Transfer(ctx, cross.ID)
	require.NoError(t, err)
	assert.Equal(t, cross, got)
	done, err := c.WaitTransfer(ctx, cross.ID)
	require.NoError(t, err)
	assert.Equal(t, cross, done)
	assert.Equal(t, int64(6500), posted(t, c, "shop1..alice"))
	assert.Equal(t, int64(1000), posted(t, c, far))

	byKey, err := c.CreateTransfer(ctx, TransferRequest{From: far, To: "shop1..bob", Currency: "USD", Amount: 1}, WithIdempotencyKey("pay-bob-1"))
	require.NoError(t, err)
	assert.Equal(t, "pay-bob-1", byKey.ID)

	_, err = c.Transfer(ctx, "nope")
	requireAPIError(t, err, http.StatusNotFound, ErrNotFound)
	_, err = c.WaitTransfer(ctx, "nope")
	requireAPIError(t, err, http.StatusNotFound, ErrNotFound)
	_, err = c.CreateTransfer(ctx, TransferRequest{From: "shop1..alice", To: "nobody", Currency: "USD", Amount: 1})
	requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)
	_, err = c.CreateTransfer(ctx, TransferRequest{From: far, To: "shop1..bob", Currency: "USD", Amount: 5000})
	requireAPIError(t, err, http.StatusUnprocessableEntity, ErrInsufficientFunds)
	_, err = c.CreateTransfer(ctx, TransferRequest{From: far, To: far, Currency: "USD", Amount: 1})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)
}

// pendingLedger answers every transfer as pending until release is closed, though the real
// ledger completed it: a cross-partition transfer whose saga is still on its way, which the
// real ledger shows only when its inline steps are cut short.
type pendingLedger struct {
	*ledger.Ledger
	release chan struct{}
	once    sync.Once
	gets    chan struct{} // one value per GET answered pending
}

func (p *pendingLedger) pending(t ledger.Transfer) ledger.Transfer {
	select {
	case <-p.release:
		return t
	default:
		t.Status, t.CompletedAt = ledger.TransferPending, nil
		return t
	}
}

func (p *pendingLedger) CreateTransfer(ctx context.Context, req ledger.TransferRequest) (ledger.TransferResult, error) {
	res, err := p.Ledger.CreateTransfer(ctx, req)
	res.Transfer = p.pending(res.Transfer)
	return res, err
}

func (p *pendingLedger) GetTransfer(ctx context.Context, id string) (ledger.Transfer, error) {
	t, err := p.Ledger.GetTransfer(ctx, id)
	t = p.pending(t)
	if t.Status == ledger.TransferPending {
		select {
		case p.gets <- struct{}{}:
		default:
		}
	}
	return t, err
}

// TestWaitTransfer: a 202 pending transfer shows Status pending; WaitTransfer polls until it
// is completed and stops polling when its context ends.
func TestWaitTransfer(t *testing.T) {
	ctx := context.Background()
	pl := &pendingLedger{release: make(chan struct{}), gets: make(chan struct{}, 1)}
	s := startServer(t, handlers.Config{}, func(l *ledger.Ledger) handlers.Ledger { pl.Ledger = l; return pl })
	c, w := newClient(t, s.URL)
	mustOpen(t, c, 100, "a")
	mustOpen(t, c, 0, "b")

	tr, err := c.CreateTransfer(ctx, TransferRequest{ID: "t1", From: "a", To: "b", Currency: "USD", Amount: 40})
	require.NoError(t, err)
	assert.Equal(t, TransferPending, tr.Status, "a 202 answer")

	cctx, cancel := context.WithCancel(ctx)
	go func() { <-pl.gets; <-pl.gets; cancel() }() // cancel once it polled at least twice
	_, err = c.WaitTransfer(cctx, "t1")
	require.ErrorIs(t, err, context.Canceled)

	go func() { <-pl.gets; <-pl.gets; close(pl.release) }()
	done, err := c.WaitTransfer(ctx, "t1")
	require.NoError(t, err)
	assert.Equal(t, TransferCompleted, done.Status)
	require.NotNil(t, done.CompletedAt)
	assert.GreaterOrEqual(t, len(w.all()), 3, "it waited between polls")
}

// TestHolds: place, read, capture part to another account, void; double capture and a
// capture above the hold are refused.
func TestHolds(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	c, _ := newClient(t, s.URL)
	mustOpen(t, c, 10000, "alice")
	mustOpen(t, c, 0, "bob")

	h, err := c.PlaceHold(ctx, "alice", HoldRequest{ID: "hold-1", Currency: "USD", Amount: 3000, TimeoutSeconds: 600})
	require.NoError(t, err)
	assert.Equal(t, HoldPending, h.Status)
	assert.Equal(t, h.CreatedAt.Add(600e9), h.ExpiresAt)
	again, err := c.PlaceHold(ctx, "alice", HoldRequest{ID: "hold-1", Currency: "USD", Amount: 3000, TimeoutSeconds: 600})
	require.NoError(t, err)
	assert.Equal(t, h, again, "the same ID replays")
	acc, err := c.Account(ctx, "alice")
	require.NoError(t, err)
	assert.Equal(t, Balance{Posted: 10000, Held: 3000, Available: 7000}, acc.Balances["USD"])
	got, err := c.Hold(ctx, "alice", "hold-1")
	require.NoError(t, err)
	assert.Equal(t, h, got)

	_, err = c.CaptureHold(ctx, "alice", "hold-1", CaptureRequest{Amount: 3001})
	requireAPIError(t, err, http.StatusUnprocessableEntity, ErrAmountExceedsHold)
	h, err = c.CaptureHold(ctx, "alice", "hold-1", CaptureRequest{Amount: 1200, To: "bob"})
	require.NoError(t, err)
	assert.Equal(t, HoldCaptured, h.Status)
	assert.Equal(t, int64(1200), h.Captured)
	assert.NotEmpty(t, h.TransferID)
	require.NotNil(t, h.ResolvedAt)
	_, err = c.CaptureHold(ctx, "alice", "hold-1", CaptureRequest{})
	requireAPIError(t, err, http.StatusConflict, ErrHoldNotPending)
	assert.Equal(t, int64(8800), posted(t, c, "alice"))
	assert.Equal(t, int64(1200), posted(t, c, "bob"))

	h2, err := c.PlaceHold(ctx, "alice", HoldRequest{Currency: "USD", Amount: 500, TimeoutSeconds: 60})
	require.NoError(t, err)
	assert.Regexp(t, `^[0-9a-f]{32}$`, h2.ID, "named by the generated Idempotency-Key")
	whole, err := c.PlaceHold(ctx, "alice", HoldRequest{Currency: "USD", Amount: 100, TimeoutSeconds: 60})
	require.NoError(t, err)
	whole, err = c.CaptureHold(ctx, "alice", whole.ID, CaptureRequest{})
	require.NoError(t, err)
	assert.Equal(t, int64(100), whole.Captured, "no amount captures the whole hold")
	h2, err = c.VoidHold(ctx, "alice", h2.ID)
	require.NoError(t, err)
	assert.Equal(t, HoldVoided, h2.Status)
	_, err = c.VoidHold(ctx, "alice", h2.ID)
	requireAPIError(t, err, http.StatusConflict, ErrHoldNotPending)

	// The pending holds, page by page: hold-a and hold-b (hold-1 was captured, h2 voided).
	for _, id := range []string{"hold-b", "hold-a"} {
		_, err = c.PlaceHold(ctx, "alice", HoldRequest{ID: id, Currency: "USD", Amount: 10, TimeoutSeconds: 60})
		require.NoError(t, err)
	}
	page, err := c.Holds(ctx, "alice", HoldsOptions{Limit: 1})
	require.NoError(t, err)
	require.Len(t, page.Holds, 1)
	assert.Equal(t, "hold-a", page.Holds[0].ID)
	assert.Equal(t, HoldPending, page.Holds[0].Status)
	page, err = c.Holds(ctx, "alice", HoldsOptions{After: page.Next})
	require.NoError(t, err)
	require.Len(t, page.Holds, 1)
	assert.Equal(t, "hold-b", page.Holds[0].ID)
	assert.Empty(t, page.Next, "the last page")
	_, err = c.Holds(ctx, "nobody", HoldsOptions{})
	requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)
	_, err = c.Holds(ctx, "alice", HoldsOptions{Limit: 1001})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)

	_, err = c.Hold(ctx, "alice", "nope")
	requireAPIError(t, err, http.StatusNotFound, ErrNotFound)
	_, err = c.PlaceHold(ctx, "alice", HoldRequest{Currency: "USD", Amount: 1e6, TimeoutSeconds: 60})
	requireAPIError(t, err, http.StatusUnprocessableEntity, ErrInsufficientFunds)
	_, err = c.PlaceHold(ctx, "alice", HoldRequest{Currency: "USD", Amount: 1})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)
}

// TestBatch: atomic and non-atomic batches, results decoded per operation, the failures of
// one operation as sentinels, and a batch across partitions refused as a whole.
func TestBatch(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	c, _ := newClient(t, s.URL)
	far := s.otherPartition(t, "shop1..alice", "far")
	mustOpen(t, c, 1000, "shop1..alice", "shop1..bob", far)

	res, err := c.Batch(ctx, BatchRequest{Atomic: true, Operations: []BatchOp{
		{Type: OpDeposit, Account: "shop1..bob", Currency: "USD", Amount: 500},
		{Type: OpTransfer, ID: "tr-2", From: "shop1..bob", To: "shop1..alice", Currency: "USD", Amount: 1200},
		{Type: OpHold, ID: "hold-3", Account: "shop1..alice", Currency: "USD", Amount: 100, TimeoutSeconds: 300},
	}})
	require.NoError(t, err)
	assert.True(t, res.Atomic)
	require.Len(t, res.Results, 3)
	var op Operation
	require.NoError(t, res.Results[0].Decode(&op))
	assert.Equal(t, int64(1500), op.Account.Balances["USD"].Posted)
	var tr Transfer
	require.NoError(t, res.Results[1].Decode(&tr))
	assert.Equal(t, TransferCompleted, tr.Status)
	assert.Equal(t, http.StatusCreated, res.Results[1].Status)
	var h Hold
	require.NoError(t, res.Results[2].Decode(&h))
	assert.Equal(t, "hold-3", h.ID)

	res, err = c.Batch(ctx, BatchRequest{Atomic: true, Operations: []BatchOp{
		{Type: OpDeposit, Account: "shop1..bob", Currency: "USD", Amount: 500},
		{Type: OpWithdrawal, Account: "shop1..bob", Currency: "USD", Amount: 1e6},
	}})
	require.NoError(t, err)
	requireAPIError(t, res.Results[0].Err(), http.StatusFailedDependency, ErrBatchAborted)
	requireAPIError(t, res.Results[1].Decode(&op), http.StatusUnprocessableEntity, ErrInsufficientFunds)
	assert.Equal(t, int64(300), posted(t, c, "shop1..bob"), "nothing of the aborted batch was written")

	_, err = c.Batch(ctx, BatchRequest{Atomic: true, Operations: []BatchOp{
		{Type: OpDeposit, Account: "shop1..bob", Currency: "USD", Amount: 1},
		{Type: OpDeposit, Account: far, Currency: "USD", Amount: 1},
	}})
	requireAPIError(t, err, http.StatusUnprocessableEntity, ErrBatchNotAtomic)
	_, err = c.Batch(ctx, BatchRequest{Atomic: false, Operations: []BatchOp{{Type: "nope", Currency: "USD", Amount: 1}}})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)

	res, err = c.Batch(ctx, BatchRequest{Atomic: false, Operations: []BatchOp{
		{Type: OpWithdrawal, Account: "shop1..bob", Currency: "USD", Amount: 100},
		{Type: OpWithdrawal, Account: "shop1..bob", Currency: "USD", Amount: 9000},
		{Type: OpDeposit, Account: far, Currency: "USD", Amount: 1},
	}})
	require.NoError(t, err)
	assert.False(t, res.Atomic)
	require.NoError(t, res.Results[0].Err())
	requireAPIError(t, res.Results[1].Err(), http.StatusUnprocessableEntity, ErrInsufficientFunds)
	require.NoError(t, res.Results[2].Err())
	assert.Equal(t, int64(1001), posted(t, c, far))

	// Bulk hold actions: hold-3 (placed above) and two more, resolved in one call.
	for _, id := range []string{"hold-4", "hold-5"} {
		_, err := c.PlaceHold(ctx, "shop1..alice", HoldRequest{ID: id, Currency: "USD", Amount: 50, TimeoutSeconds: 300})
		require.NoError(t, err)
	}
	res, err = c.Batch(ctx, BatchRequest{Atomic: true, Operations: []BatchOp{
		{Type: OpCapture, Account: "shop1..alice", Hold: "hold-3", Amount: 60, To: "shop1..bob"},
		{Type: OpVoid, Account: "shop1..alice", Hold: "hold-4"},
		{Type: OpCapture, Account: "shop1..alice", Hold: "hold-5"},
	}})
	require.NoError(t, err)
	for i, want := range []string{HoldCaptured, HoldVoided, HoldCaptured} {
		require.NoError(t, res.Results[i].Decode(&h))
		assert.Equal(t, http.StatusOK, res.Results[i].Status)
		assert.Equal(t, want, h.Status)
	}
	assert.Equal(t, int64(200+60), posted(t, c, "shop1..bob"))
	res, err = c.Batch(ctx, BatchRequest{Atomic: false, Operations: []BatchOp{{Type: OpVoid, Account: "shop1..alice", Hold: "hold-4"}}})
	require.NoError(t, err)
	requireAPIError(t, res.Results[0].Err(), http.StatusConflict, ErrHoldNotPending)
}

// TestAuthRelayAndProbes: against a server with API and admin keys, a client without a key
// gets ErrUnauthorized, a user key reads the relay status but gets ErrForbidden for the
// replay, an admin key replays; the probes answer without a key.
func TestAuthRelayAndProbes(t *testing.T) {
	ctx := context.Background()
	user, admin := "user-key-0123456789", "admin-key-0123456789"
	keys, err := handlers.NewKeys([]handlers.Key{
		{Name: "user", SHA256: handlers.HashToken(user), Scopes: []handlers.Scope{handlers.ScopeRead, handlers.ScopeWrite}},
		{Name: "admin", SHA256: handlers.HashToken(admin), Scopes: []handlers.Scope{handlers.ScopeAdmin}},
	})
	require.NoError(t, err)
	s := startServer(t, handlers.Config{Keys: keys}, nil)

	anon, _ := newClient(t, s.URL)
	_, err = anon.Account(ctx, "alice")
	requireAPIError(t, err, http.StatusUnauthorized, ErrUnauthorized)
	_, err = anon.Deposit(ctx, "alice", "USD", 1)
	requireAPIError(t, err, http.StatusUnauthorized, ErrUnauthorized)
	wrong, _ := newClient(t, s.URL, WithAPIKey("wrong-key-0123456789"))
	_, err = wrong.RelayStatus(ctx)
	requireAPIError(t, err, http.StatusUnauthorized, ErrUnauthorized)
	require.NoError(t, anon.Health(ctx))
	require.NoError(t, anon.Ready(ctx))

	u, _ := newClient(t, s.URL, WithAPIKey(user))
	mustOpen(t, u, 5, "alice")
	st, err := u.RelayStatus(ctx)
	require.NoError(t, err)
	require.Len(t, st, 4)
	p := st[s.l.Partition("alice")]
	assert.Equal(t, s.l.Partition("alice"), p.Partition)
	assert.Equal(t, int64(2), p.Length, "AccountOpened and Deposited wait for a relay")
	assert.Equal(t, int64(2), p.Backlog)
	assert.False(t, p.Consumed)
	_, err = u.ReplayDeadLetters(ctx)
	requireAPIError(t, err, http.StatusForbidden, ErrForbidden)

	a, _ := newClient(t, s.URL, WithAPIKey(admin))
	n, err := a.ReplayDeadLetters(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, n)
}

// TestPayloadTooLarge: a body over the server's limit is ErrPayloadTooLarge, not retried.
func TestPayloadTooLarge(t *testing.T) {
	s := startServer(t, handlers.Config{MaxBodyBytes: 256}, nil)
	c, _ := newClient(t, s.URL)
	_, err := c.OpenAccount(context.Background(), OpenAccountRequest{ID: "big", Metadata: map[string]string{"note": strings.Repeat("x", 300)}})
	requireAPIError(t, err, http.StatusRequestEntityTooLarge, ErrPayloadTooLarge)
}

// TestNew: invalid base URLs and retry policies are refused; a trailing slash is fine.
func TestNew(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8080", "ftp://x", "http://", "http://x/?a=1"} {
		_, err := New(u)
		assert.Error(t, err, u)
	}
	_, err := New("http://x", WithRetry(RetryPolicy{MaxAttempts: -1}))
	assert.Error(t, err)
	_, err = New("http://x", WithRetry(RetryPolicy{BaseDelay: 5e9, MaxDelay: 1e9}))
	assert.Error(t, err)
	_, err = New("http://x", WithHTTPClient(nil))
	assert.Error(t, err)
	c, err := New("http://x/api/")
	require.NoError(t, err)
	assert.Equal(t, "http://x/api", c.base)
}
