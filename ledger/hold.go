package ledger

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Hold statuses.
const (
	HoldPending  = "pending"
	HoldCaptured = "captured"
	HoldVoided   = "voided"
	HoldExpired  = "expired"
)

// MaxHoldTimeout bounds how long a hold may stay pending.
const MaxHoldTimeout = 90 * 24 * time.Hour

// Hold is a hold as GET /v1/accounts/{id}/holds/{hold} shows it.
type Hold struct {
	ID         string     `json:"id"`
	Account    string     `json:"account"`
	Currency   string     `json:"currency"`
	Amount     int64      `json:"amount"`
	Status     string     `json:"status"`
	Captured   int64      `json:"captured,omitempty"`
	To         string     `json:"to,omitempty"`
	TransferID string     `json:"transfer_id,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
}

// PlaceHold reserves an amount of an account's available balance until it is captured,
// voided or expires.
type PlaceHold struct {
	Account  string
	ID       string // the hold's ID, unique per account; it is the request's idempotency key ("": a random one)
	Currency string
	Amount   int64
	Timeout  time.Duration
}

func (c PlaceHold) accounts() []string { return []string{c.Account} }

// Validate returns an error wrapping ErrInvalid when the command is malformed.
func (c PlaceHold) Validate() error {
	if err := validateMoney(c.Account, c.Currency, c.Amount); err != nil {
		return err
	}
	if c.ID != "" {
		if err := ValidateID("hold id", c.ID); err != nil {
			return err
		}
	}
	if c.Timeout < time.Second || c.Timeout > MaxHoldTimeout {
		return invalidf("timeout_seconds must be 1..%d", int64(MaxHoldTimeout/time.Second))
	}
	return nil
}

func (c PlaceHold) decide(d *decision) (any, error) {
	a, err := d.open(c.Account)
	if err != nil {
		return nil, err
	}
	if _, ok := a.holds.get(c.ID); ok {
		return nil, ErrIdempotencyKeyReused
	}
	if err := requireAvailable(a, c.Currency, c.Amount); err != nil {
		return nil, err
	}
	expires := time.UnixMilli(d.now.Add(c.Timeout).UnixMilli()).UTC()
	if _, err := d.emit(a, EventHoldPlaced, HoldData{HoldID: c.ID, Currency: c.Currency, Amount: c.Amount, ExpiresAt: expires}); err != nil {
		return nil, err
	}
	p := d.keys.partition(c.Account)
	h := Hold{ID: c.ID, Account: c.Account, Currency: c.Currency, Amount: c.Amount, Status: HoldPending,
		CreatedAt: time.UnixMilli(d.now.UnixMilli()).UTC(), ExpiresAt: expires}
	key := d.keys.hold(p, c.Account, c.ID)
	d.write("HSET", key, holdFields(h)...)
	if d.placed == nil {
		d.placed = map[string]bool{}
	}
	d.placed[key] = true
	d.write("ZADD", d.keys.holdExpiry(p), expires.UnixMilli(), c.Account+":"+c.ID)
	return h, nil
}

// holdFields returns the record fields of h.
func holdFields(h Hold) []any {
	out := []any{"id", h.ID, "account", h.Account, "currency", h.Currency, "amount", h.Amount,
		"status", h.Status, "created_at", h.CreatedAt.Format(time.RFC3339Nano), "expires_at", h.ExpiresAt.Format(time.RFC3339Nano)}
	if h.Captured > 0 {
		out = append(out, "captured", h.Captured)
	}
	if h.To != "" {
		out = append(out, "to", h.To, "transfer_id", h.TransferID)
	}
	if h.ResolvedAt != nil {
		out = append(out, "resolved_at", h.ResolvedAt.Format(time.RFC3339Nano))
	}
	return out
}

// resolveHold emits typ for the pending hold id of a and updates its record. captured is
// the amount a capture takes (0 otherwise).
func (d *decision) resolveHold(a *Account, id, typ, status string, captured int64, to, transferID string) (Hold, error) {
	ph, _ := a.holds.get(id)
	if _, err := d.emit(a, typ, HoldData{HoldID: id, Currency: ph.Currency, Amount: ph.Amount, ExpiresAt: ph.ExpiresAt,
		Captured: captured, To: to, TransferID: transferID}); err != nil {
		return Hold{}, err
	}
	now := d.now.UTC()
	p := d.keys.partition(a.ID)
	h := Hold{ID: id, Account: a.ID, Currency: ph.Currency, Amount: ph.Amount, Status: status, Captured: captured,
		To: to, TransferID: transferID, CreatedAt: ph.CreatedAt, ExpiresAt: ph.ExpiresAt, ResolvedAt: &now}
	fields := []any{"status", status, "resolved_at", now.Format(time.RFC3339Nano)}
	if captured > 0 {
		fields = append(fields, "captured", captured)
	}
	if to != "" {
		fields = append(fields, "to", to, "transfer_id", transferID)
	}
	d.write("HSET", d.keys.hold(p, a.ID, id), fields...)
	d.write("ZREM", d.keys.holdExpiry(p), a.ID+":"+id)
	return h, nil
}

// expireHold emits HoldExpired for a pending hold of a whose expiry has passed.
func (d *decision) expireHold(a *Account, id string) error {
	_, err := d.resolveHold(a, id, EventHoldExpired, HoldExpired, 0, "", "")
	return err
}

// CaptureHold takes all or part of a pending hold; the rest is released. With To, the
// captured amount moves to that account as a transfer (TransferID): in the same script when
// both accounts share a partition, through the transfer saga otherwise.
type CaptureHold struct {
	Account    string
	HoldID     string
	Amount     int64 // 0: the whole hold
	To         string
	TransferID string // set by Ledger.CaptureHold when To is given
	sameTo     bool   // To is in Account's partition
	toErr      error  // why To (in another partition) refuses, as prepareTransfer read it
}

func (c CaptureHold) accounts() []string {
	if c.sameTo {
		return []string{c.Account, c.To}
	}
	return []string{c.Account}
}

func (c CaptureHold) probes(k keyspace) []string { return []string{holdKey(k, c.Account, c.HoldID)} }

func (c CaptureHold) decide(d *decision) (any, error) {
	a := d.acc(c.Account)
	ph, ok := a.liveHold(c.HoldID, d.now)
	if !ok {
		return nil, notPending(d, c.Account, c.HoldID)
	}
	amount := c.Amount
	if amount == 0 {
		amount = ph.Amount
	}
	if amount > ph.Amount {
		return nil, fmt.Errorf("%w: %d requested, %d held", ErrAmountExceedsHold, amount, ph.Amount)
	}
	var to *Account
	if c.sameTo {
		var err error
		if to, err = d.open(c.To); err != nil {
			return nil, err
		}
	} else if c.toErr != nil {
		return nil, c.toErr
	}
	h, err := d.resolveHold(a, c.HoldID, EventHoldCaptured, HoldCaptured, amount, c.To, c.TransferID)
	if err != nil {
		return nil, err
	}
	if c.To != "" {
		t := Transfer{ID: c.TransferID, From: c.Account, To: c.To, Currency: ph.Currency, Amount: amount, CreatedAt: d.now.UTC(), HoldID: c.HoldID}
		d.guard(d.keys.transfer(d.keys.partition(c.Account), t.ID))
		if err := d.startTransfer(&t, to); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// VoidHold releases a pending hold.
type VoidHold struct {
	Account string
	HoldID  string
}

func (c VoidHold) accounts() []string { return []string{c.Account} }

func (c VoidHold) probes(k keyspace) []string { return []string{holdKey(k, c.Account, c.HoldID)} }

func (c VoidHold) decide(d *decision) (any, error) {
	a := d.acc(c.Account)
	if _, ok := a.liveHold(c.HoldID, d.now); !ok {
		return nil, notPending(d, c.Account, c.HoldID)
	}
	return d.resolveHold(a, c.HoldID, EventHoldVoided, HoldVoided, 0, "", "")
}

// holdKey is the key of a hold's record.
func holdKey(k keyspace, account, hold string) string {
	return k.hold(k.partition(account), account, hold)
}

// notPending is the refusal of a capture or void of a hold that is not pending: ErrNotFound
// when it was never placed (its record, probed with the snapshots, does not exist — a
// refused placement's record has no "id"), else ErrHoldNotPending.
func notPending(d *decision, account, hold string) error {
	if !d.placed[holdKey(d.keys, account, hold)] {
		return fmt.Errorf("%w: hold %s of %s", ErrNotFound, hold, account)
	}
	return fmt.Errorf("%w: hold %s is not pending", ErrHoldNotPending, hold)
}

// expireHoldCmd appends HoldExpired for a hold whose expiry has passed (the sweeper's
// command). It fails with errNothingToDo when the hold is no longer pending, errNotDue when
// it has not expired yet (by this process's clock).
type expireHoldCmd struct {
	Account string
	HoldID  string
}

func (c expireHoldCmd) accounts() []string { return []string{c.Account} }

// errNothingToDo rejects a housekeeping command that found its work already done.
var errNothingToDo = errors.New("ledger: nothing to do")

// errNotDue rejects a housekeeping command that came too early.
var errNotDue = errors.New("ledger: not due")

func (c expireHoldCmd) decide(d *decision) (any, error) {
	a := d.acc(c.Account)
	h, ok := a.holds.get(c.HoldID)
	switch {
	case !ok:
		return nil, errNothingToDo
	case d.now.Before(h.ExpiresAt):
		return nil, errNotDue
	}
	if err := d.expireHold(a, c.HoldID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// PlaceHold places a hold. The hold's ID is its idempotency key: the same ID with the same
// request returns the first response (Receipt.Replayed), with another request
// ErrIdempotencyKeyReused. It returns ErrAccountNotFound, ErrAccountClosed,
// ErrInsufficientFunds or an error wrapping ErrInvalid.
func (l *Ledger) PlaceHold(ctx context.Context, cmd PlaceHold) (Receipt, error) {
	if err := cmd.Validate(); err != nil {
		return Receipt{}, err
	}
	named := cmd.ID != ""
	if !named {
		cmd.ID = "h-" + rand.Text() // nobody can send it again: no refusal is kept under it
	}
	// The fingerprint leaves out the timeout's effect (expires_at): a retry is the same hold.
	ref := recordRef{key: l.store.keys.hold(l.store.keys.partition(cmd.Account), cmd.Account, cmd.ID), kind: "mark", keepsRefusals: named}
	return l.submitRef(ctx, cmd, ref, fingerprint(cmd))
}

// CaptureHold captures all (amount 0) or part of a pending hold; with to, the captured
// amount is transferred to that account (see Transfer; the transfer's ID is returned in the
// hold as transfer_id). It returns ErrNotFound (no such hold), ErrHoldNotPending,
// ErrAmountExceedsHold, ErrAccountNotFound or ErrAccountClosed (of to).
func (l *Ledger) CaptureHold(ctx context.Context, account, hold string, amount int64, to string, opts WriteOptions) (Receipt, error) {
	if err := validateCapture(account, hold, amount, to); err != nil {
		return Receipt{}, err
	}
	return l.captureHold(ctx, account, hold, amount, to, opts)
}

// validateCapture returns an error wrapping ErrInvalid unless a capture of hold on account
// for amount (0: all of it), moved on to to (when set), is well formed.
func validateCapture(account, hold string, amount int64, to string) error {
	if err := validateHoldIDs(account, hold); err != nil {
		return err
	}
	if amount < 0 {
		return invalidf("amount must be a positive integer in minor units")
	}
	if to == "" {
		return nil
	}
	if err := ValidateID("to", to); err != nil {
		return err
	}
	if to == account {
		return invalidf("to must be another account")
	}
	return nil
}

// captureHold captures a hold whose request validateCapture accepted.
func (l *Ledger) captureHold(ctx context.Context, account, hold string, amount int64, to string, opts WriteOptions) (Receipt, error) {
	cmd := CaptureHold{Account: account, HoldID: hold, Amount: amount}
	claimed := false // this call claimed the transfer ID (see prepareTransfer)
	if to != "" {
		cmd.To, cmd.TransferID = to, captureTransferID(account, hold)
		cmd.sameTo = l.store.keys.partition(to) == l.store.keys.partition(account)
		var err error
		if claimed, cmd.toErr, err = l.prepareTransfer(ctx, cmd.TransferID, account, to); err != nil {
			return Receipt{}, err
		}
	}
	if to != "" && !cmd.sameTo {
		// Like CreateTransfer: this process's transfer manager, which sees the debit's event
		// while this request still drives the transfer, waits instead of running beside it.
		defer l.driving.start(cmd.TransferID)()
	}
	rc, err := l.submit(ctx, cmd, opts)
	if claimed && unmade(err) {
		l.releaseTransferID(ctx, cmd.TransferID, account, false)
	}
	if err == nil && to != "" && !claimed && !rc.Replayed {
		l.keepTransferID(ctx, cmd.TransferID, account)
	}
	if err != nil || to == "" || cmd.sameTo {
		return rc, err
	}
	// The captured money is on its way: finish the transfer inline when possible (the
	// process manager and the sweep finish it otherwise).
	_, _ = l.driveTransfer(ctx, l.store.keys.partition(account), cmd.TransferID)
	return rc, nil
}

// VoidHold releases a pending hold. It returns ErrNotFound or ErrHoldNotPending.
func (l *Ledger) VoidHold(ctx context.Context, account, hold string, opts WriteOptions) (Receipt, error) {
	if err := validateHoldIDs(account, hold); err != nil {
		return Receipt{}, err
	}
	return l.submit(ctx, VoidHold{Account: account, HoldID: hold}, opts)
}

func validateHoldIDs(account, hold string) error {
	if err := ValidateID("account", account); err != nil {
		return err
	}
	return ValidateID("hold id", hold)
}

// Hold returns a hold. A pending hold whose expiry has passed is reported expired even
// before the sweeper records it. It returns ErrNotFound or an error wrapping ErrInvalid.
func (l *Ledger) Hold(ctx context.Context, account, hold string) (Hold, error) {
	if err := validateHoldIDs(account, hold); err != nil {
		return Hold{}, err
	}
	v, err := l.store.rdb.HGetAll(ctx, l.store.keys.hold(l.store.keys.partition(account), account, hold)).Result()
	if err != nil {
		return Hold{}, storeErr(ctx, err)
	}
	if v["id"] == "" {
		return Hold{}, fmt.Errorf("%w: hold %s of %s", ErrNotFound, hold, account)
	}
	h, err := parseHold(v)
	if err != nil {
		return Hold{}, err
	}
	if h.Status == HoldPending && !l.cfg.Clock().Before(h.ExpiresAt) {
		h.Status = HoldExpired
	}
	return h, nil
}

// MaxHoldsPage bounds the holds one PendingHolds call returns.
const MaxHoldsPage = 1000

// PendingHolds returns up to limit (1..MaxHoldsPage) pending holds of an account with IDs
// above after ("" for the first page), in ID order, and the ID to pass as after for the
// next page ("" when there is none). A hold whose expiry has passed is left out even before
// the sweeper records it expired: it no longer counts as held. The holds come from the
// account's snapshot, one read, so a page agrees with the balances' held amounts of the
// same moment. It returns ErrAccountNotFound or an error wrapping ErrInvalid.
func (l *Ledger) PendingHolds(ctx context.Context, account, after string, limit int) ([]Hold, string, error) {
	if limit < 1 || limit > MaxHoldsPage {
		return nil, "", invalidf("limit must be 1..%d", MaxHoldsPage)
	}
	if err := ValidateID("account", account); err != nil {
		return nil, "", err
	}
	if after != "" {
		if err := ValidateID("after", after); err != nil {
			return nil, "", err
		}
	}
	now := l.cfg.Clock()
	acc, err := l.store.account(ctx, account, now)
	if err != nil {
		return nil, "", err
	}
	if !acc.exists() {
		return nil, "", ErrAccountNotFound
	}
	ids := acc.holds.ids()
	ids = ids[sort.SearchStrings(ids, after):]
	if len(ids) > 0 && ids[0] == after {
		ids = ids[1:]
	}
	holds := make([]Hold, 0, min(limit, len(ids)))
	for _, id := range ids {
		ph, live := acc.liveHold(id, now)
		if !live {
			continue
		}
		if len(holds) == limit {
			// One more live hold exists: the page is full and another follows.
			return holds, holds[len(holds)-1].ID, nil
		}
		holds = append(holds, Hold{ID: id, Account: account, Currency: ph.Currency, Amount: ph.Amount,
			Status: HoldPending, CreatedAt: ph.CreatedAt, ExpiresAt: ph.ExpiresAt})
	}
	return holds, "", nil
}

func parseHold(v map[string]string) (Hold, error) {
	h := Hold{ID: v["id"], Account: v["account"], Currency: v["currency"], Status: v["status"], To: v["to"], TransferID: v["transfer_id"]}
	var err error
	bad := func(f string, err error) error {
		return fmt.Errorf("%w: corrupt hold record %s: %s: %w", ErrInternal, h.ID, f, err)
	}
	if h.Amount, err = strconv.ParseInt(v["amount"], 10, 64); err != nil {
		return Hold{}, bad("amount", err)
	}
	if c := v["captured"]; c != "" {
		if h.Captured, err = strconv.ParseInt(c, 10, 64); err != nil {
			return Hold{}, bad("captured", err)
		}
	}
	if h.CreatedAt, err = time.Parse(time.RFC3339Nano, v["created_at"]); err != nil {
		return Hold{}, bad("created_at", err)
	}
	if h.ExpiresAt, err = time.Parse(time.RFC3339Nano, v["expires_at"]); err != nil {
		return Hold{}, bad("expires_at", err)
	}
	if r := v["resolved_at"]; r != "" {
		t, err := time.Parse(time.RFC3339Nano, r)
		if err != nil {
			return Hold{}, bad("resolved_at", err)
		}
		h.ResolvedAt = &t
	}
	return h, nil
}

// expireDue appends HoldExpired for up to limit holds of partition p whose expiry has
// passed, and returns how many it expired. The expiries are submitted together, so they
// meet in the partition's group commit instead of paying a round trip each.
func (l *Ledger) expireDue(ctx context.Context, p int, limit int64) (int, error) {
	now := l.cfg.Clock()
	key := l.store.keys.holdExpiry(p)
	due, err := l.store.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: key, Start: "-inf", Stop: strconv.FormatInt(now.UnixMilli(), 10),
		ByScore: true, Count: limit}).Result()
	if err != nil {
		return 0, storeErr(ctx, err)
	}
	errs := make([]error, len(due))
	var wg sync.WaitGroup
	for j, m := range due {
		i := strings.LastIndex(m, ":")
		if i < 0 {
			errs[j] = errNotDue // not an entry of ours: leave it
			continue
		}
		wg.Go(func() {
			_, errs[j] = l.submit(ctx, expireHoldCmd{Account: m[:i], HoldID: m[i+1:]}, WriteOptions{})
		})
	}
	wg.Wait()
	n := 0
	var stale []any
	for j, err := range errs {
		switch {
		case err == nil:
			n++
		case errors.Is(err, errNotDue):
		case errors.Is(err, errNothingToDo):
			// Resolved meanwhile; its own commit removed it from the index, or this entry
			// is stale: drop it.
			stale = append(stale, due[j])
		default:
			return n, err
		}
	}
	if len(stale) > 0 {
		if err := l.store.rdb.ZRem(ctx, key, stale...).Err(); err != nil {
			return n, storeErr(ctx, err)
		}
	}
	return n, nil
}
