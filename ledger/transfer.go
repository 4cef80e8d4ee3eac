package ledger

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Transfer statuses.
const (
	TransferPending   = "pending"
	TransferCompleted = "completed"
	TransferRefunded  = "refunded"
)

// Transfer is a movement of money from one account to another, as GET /v1/transfers/{id}
// shows it.
type Transfer struct {
	ID          string            `json:"id"`
	From        string            `json:"from"`
	To          string            `json:"to"`
	Currency    string            `json:"currency"`
	Amount      int64             `json:"amount"`
	Status      string            `json:"status"`
	Reason      string            `json:"reason,omitempty"`
	HoldID      string            `json:"hold_id,omitempty"` // set when a hold capture made it
	Metadata    map[string]string `json:"metadata,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	CompletedAt *time.Time        `json:"completed_at,omitempty"`
}

// TransferRequest asks for a transfer. ID is the caller's transfer ID and its idempotency
// key: requests with one ID make one transfer. Without one the ledger picks a random ID
// (and, since nobody can send that ID again, keeps no refusal under it).
type TransferRequest struct {
	ID       string
	From, To string
	Currency string
	Amount   int64
	Metadata map[string]string
}

// Validate returns an error wrapping ErrInvalid when the request is malformed.
func (r TransferRequest) Validate() error {
	if r.ID != "" {
		if err := ValidateID("id", r.ID); err != nil {
			return err
		}
	}
	if err := ValidateID("to", r.To); err != nil {
		return err
	}
	if err := validateMoney(r.From, r.Currency, r.Amount); err != nil {
		return err
	}
	if r.From == r.To {
		return invalidf("from and to must be different accounts")
	}
	return validateMetadata(r.Metadata)
}

// transferCmd debits the source; when both accounts share a partition it also credits the
// destination, in the same script, and the transfer is complete at once.
type transferCmd struct {
	T      Transfer
	SameTo bool
	// toErr is why the destination refuses, as prepareTransfer read it (another partition:
	// not read by this command), so that the refusal is recorded like any other.
	toErr error
	// prep, when set, claims the ID and reads the destination in the round trip of every
	// read of the command (see transferPrep); toErr is then prep's.
	prep *transferPrep
}

// transferPrep is what prepareTransfer does — claim the transfer ID for its source, read
// whether the destination exists and is open — done inside the source's group-commit read
// (Ledger.attempt adds its commands to that pipeline) instead of in a round trip of its
// own before it. Each read sets owner and toErr (or err) for the decision that follows it.
type transferPrep struct {
	id, from string
	to       string // "" when the destination is in the source's partition: the command reads it
	owner    string // the source the ID's index names
	toErr    error
	// toSnap is the destination as the last read found it, when it exists and is open: the
	// credit's first attempt decides on it instead of reading it again (see request.pre).
	toSnap *snapshot
	err    error // the destination's snapshot could not be read
	// claimed is set once a read made the claim, and stays set: only then may the caller
	// let the claim expire (releaseTransferID); otherwise it must keep the index for good
	// if it makes the transfer (keepTransferID). Read by the caller only after the request
	// finished.
	claimed bool
}

// prepare is the transfer's transferPrep, or nil (see preparer).
func (c transferCmd) prepare() *transferPrep { return c.prep }

// queue adds pr's claim and destination read to pipe, and returns the function that sets
// pr's results from their replies once pipe ran.
func (pr *transferPrep) queue(ctx context.Context, pipe redis.Pipeliner, k keyspace, now time.Time) (take func()) {
	idx := k.transferIndex(pr.id)
	claim := pipe.SetNX(ctx, idx, pr.from, 0)
	owner := pipe.Get(ctx, idx)
	var to *redis.MapStringStringCmd
	if pr.to != "" {
		to = pipe.HGetAll(ctx, k.snapshot(k.partition(pr.to), pr.to))
	}
	return func() {
		pr.claimed = pr.claimed || claim.Val()
		pr.owner = owner.Val()
		pr.toErr, pr.err = nil, nil
		if to == nil {
			return
		}
		pr.toSnap = nil
		switch snap, err := newSnapshot(pr.to, to.Val(), now); {
		case err != nil:
			pr.err = err
		case !snap.acc.exists():
			pr.toErr = fmt.Errorf("%w: %s", ErrAccountNotFound, pr.to)
		case snap.acc.closed():
			pr.toErr = fmt.Errorf("%w: %s", ErrAccountClosed, pr.to)
		default:
			pr.toSnap = &snap
		}
	}
}

// verdict returns why the transfer cannot go on after what the last read found: its ID
// belongs to another source, or the destination's snapshot could not be read.
func (pr *transferPrep) verdict() error {
	if pr.owner != pr.from {
		return fmt.Errorf("%w: transfer %s belongs to another source account", ErrIdempotencyKeyReused, pr.id)
	}
	return pr.err
}

func (c transferCmd) accounts() []string {
	if c.SameTo {
		return []string{c.T.From, c.T.To}
	}
	return []string{c.T.From}
}

func (c transferCmd) decide(d *decision) (any, error) {
	from, err := d.open(c.T.From)
	if err != nil {
		return nil, err
	}
	toErr := c.toErr
	if c.prep != nil {
		if err := c.prep.verdict(); err != nil {
			return nil, err
		}
		toErr = c.prep.toErr
	}
	if toErr != nil && !c.SameTo {
		return nil, toErr
	}
	var to *Account
	if c.SameTo {
		if to, err = d.open(c.T.To); err != nil {
			return nil, err
		}
	}
	if err := requireAvailable(from, c.T.Currency, c.T.Amount); err != nil {
		return nil, err
	}
	t := c.T
	t.CreatedAt = d.now.UTC()
	if _, err := d.emit(from, EventTransferDebited, transferData(t, "")); err != nil {
		return nil, err
	}
	if err := d.startTransfer(&t, to); err != nil {
		return nil, err
	}
	return t, nil
}

func transferData(t Transfer, reason string) TransferData {
	return TransferData{TransferID: t.ID, From: t.From, To: t.To, Currency: t.Currency, Amount: t.Amount, Reason: reason}
}

// startTransfer records a transfer whose source was just debited. With to (same partition)
// it credits the destination at once; otherwise the transfer waits, pending, for the saga.
func (d *decision) startTransfer(t *Transfer, to *Account) error {
	p := d.keys.partition(t.From)
	d.tr.transfersCreated++
	if to != nil {
		if _, err := d.emit(to, EventTransferCredited, transferData(*t, "")); err != nil {
			return err
		}
		now := d.now.UTC()
		t.Status, t.CompletedAt = TransferCompleted, &now
		d.tr.transfersCompleted++
	} else {
		t.Status = TransferPending
		d.write("ZADD", d.keys.transfersPending(p), t.CreatedAt.UnixMilli(), t.ID)
	}
	fields, err := transferFields(*t)
	if err != nil {
		return err
	}
	d.write("HSET", d.keys.transfer(p, t.ID), fields...)
	d.indexMetadata(p, indexTransfers, t.ID, t.Metadata) // with the record: see lookup.go
	return nil
}

func transferFields(t Transfer) ([]any, error) {
	out := []any{"id", t.ID, "from", t.From, "to", t.To, "currency", t.Currency, "amount", t.Amount,
		"status", t.Status, "created_at", t.CreatedAt.Format(time.RFC3339Nano)}
	if t.HoldID != "" {
		out = append(out, "hold_id", t.HoldID)
	}
	if len(t.Metadata) > 0 {
		md, err := json.Marshal(t.Metadata)
		if err != nil {
			return nil, fmt.Errorf("ledger: encode metadata: %w", err)
		}
		out = append(out, "metadata", string(md))
	}
	if t.CompletedAt != nil {
		out = append(out, "completed_at", t.CompletedAt.Format(time.RFC3339Nano))
	}
	return out, nil
}

// creditOutcome is the recorded outcome of a transfer's credit step.
type creditOutcome struct {
	Credited bool   `json:"credited"`
	Reason   string `json:"reason,omitempty"` // why the destination refused the credit
	// CompletedAt is set when the same commit marked the transfer completed (see
	// transferCredit.Complete).
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

// transferCredit credits the destination of a cross-partition transfer, or records why it
// refuses (closed meanwhile, or the balance would overflow). Its record makes the outcome
// final: a later attempt replays it instead of deciding again.
//
// With Complete (a single Redis, not Cluster: the transfer record lives in the source's
// partition, another slot) the commit that credits also marks the transfer completed and
// takes it out of the pending index, saving the saga's last round trip. A credit is
// recorded once, so nothing can refund a transfer whose credit committed: completing it in
// the same commit is what the separate step (completeScript) would do next.
type transferCredit struct {
	T        Transfer
	Complete bool
}

func (c transferCredit) accounts() []string { return []string{c.T.To} }

func (c transferCredit) decide(d *decision) (any, error) {
	to := d.acc(c.T.To)
	switch {
	case !to.exists():
		return creditOutcome{Reason: "destination account not found"}, nil
	case to.closed():
		return creditOutcome{Reason: "destination account closed"}, nil
	}
	if _, err := add(to.Balances[c.T.Currency].Posted, c.T.Amount); err != nil {
		return creditOutcome{Reason: "destination balance would overflow"}, nil
	}
	if _, err := d.emit(to, EventTransferCredited, transferData(c.T, "")); err != nil {
		return nil, err
	}
	if !c.Complete {
		return creditOutcome{Credited: true}, nil
	}
	p := d.keys.partition(c.T.From)
	now := d.now.UTC()
	d.write("HSET", d.keys.transfer(p, c.T.ID), "status", TransferCompleted, "completed_at", now.Format(time.RFC3339Nano))
	d.write("ZREM", d.keys.transfersPending(p), c.T.ID)
	d.tr.transfersCompleted++
	return creditOutcome{Credited: true, CompletedAt: &now}, nil
}

// transferRefund returns the money of a transfer whose credit was refused to its source.
type transferRefund struct {
	T      Transfer
	Reason string
}

func (c transferRefund) accounts() []string { return []string{c.T.From} }

func (c transferRefund) decide(d *decision) (any, error) {
	from := d.acc(c.T.From)
	if _, err := d.emit(from, EventTransferRefunded, transferData(c.T, c.Reason)); err != nil {
		return nil, err
	}
	t := c.T
	now := d.now.UTC()
	t.Status, t.Reason, t.CompletedAt = TransferRefunded, c.Reason, &now
	p := d.keys.partition(t.From)
	d.write("HSET", d.keys.transfer(p, t.ID), "status", t.Status, "reason", t.Reason, "completed_at", now.Format(time.RFC3339Nano))
	d.write("ZREM", d.keys.transfersPending(p), t.ID)
	d.tr.transfersRefunded++
	return t, nil
}

// completeScript marks a pending transfer completed once its credit is recorded.
var completeScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0`)

// TransferResult is the answer to CreateTransfer.
type TransferResult struct {
	Transfer Transfer
	Replayed bool // the ID was known: this is the transfer as it stands now
}

// CreateTransfer moves money between two accounts. Within one partition it is one atomic
// script and the result is completed. Across partitions the source is debited with a
// durable transfer record, then the destination is credited (or, if it refuses, the source
// refunded); the steps run inline, and when they cannot finish within ctx the result is
// pending and the transfer process manager and the sweep finish it.
//
// A known ID returns that transfer as it stands (Replayed), driving it on if it is pending;
// the same ID with another request is ErrIdempotencyKeyReused. It returns
// ErrAccountNotFound, ErrAccountClosed, ErrInsufficientFunds or an error wrapping
// ErrInvalid, and in each case no money moves. A refusal is recorded under the ID (see
// rejection.go): the same request again replays it (a *ReplayedError), for as long as an
// idempotency key is kept, and GetTransfer does not find the ID.
func (l *Ledger) CreateTransfer(ctx context.Context, req TransferRequest) (TransferResult, error) {
	if err := req.Validate(); err != nil {
		return TransferResult{}, err
	}
	named := req.ID != ""
	if !named {
		req.ID = "t-" + rand.Text()
	}
	defer l.driving.start(req.ID)()
	cmd := transferCmd{
		T:      Transfer{ID: req.ID, From: req.From, To: req.To, Currency: req.Currency, Amount: req.Amount, Metadata: req.Metadata},
		SameTo: l.store.keys.partition(req.From) == l.store.keys.partition(req.To),
	}
	cmd.prep = &transferPrep{id: req.ID, from: req.From}
	if !cmd.SameTo {
		cmd.prep.to = req.To
	}
	ref := recordRef{key: l.store.keys.transfer(l.store.keys.partition(req.From), req.ID), kind: "mark", keepsRefusals: named}
	rc, err := l.submitRef(ctx, cmd, ref, fingerprint(cmd.T))
	if err != nil {
		// unmade first: a request that ended before its outcome was known (cancelled
		// while a leader may still read for it) neither releases nor reads prep.
		if unmade(err) && cmd.prep.claimed {
			l.releaseTransferID(ctx, req.ID, req.From, named)
		}
		return TransferResult{}, err
	}
	if claimed := cmd.prep.claimed; !claimed && !rc.Replayed {
		l.keepTransferID(ctx, req.ID, req.From)
	}
	var t Transfer
	if rc.Replayed {
		if t, err = l.transferIn(ctx, l.store.keys.partition(req.From), req.ID); err != nil {
			return TransferResult{}, err
		}
	} else if err := json.Unmarshal(rc.Body, &t); err != nil {
		return TransferResult{}, fmt.Errorf("%w: decode transfer: %w", ErrInternal, err)
	}
	if t.Status == TransferPending {
		// The credit decides first on the destination this request's read found (unless
		// the transfer was made before): a commit checks its version like any other, and a
		// stale one is read again.
		var pre *snapshot
		if !rc.Replayed {
			pre = cmd.prep.toSnap
		}
		if done, err := l.drive(ctx, t, pre); err == nil {
			t = done
		}
		// Otherwise it stays pending: the process manager and the sweep finish it.
	}
	return TransferResult{Transfer: t, Replayed: rc.Replayed}, nil
}

// prepareTransfer claims the transfer ID for its source (the index GetTransfer reads) and
// reads whether the destination exists and is open — one round trip. (CreateTransfer does
// the same inside its group-commit read instead: see transferPrep; an atomic batch claims
// all its IDs in one round trip: claimTransferIDs. Captures with a destination, which claim
// before they queue, use this.) A transfer ID already
// claimed by another source is ErrIdempotencyKeyReused; one claimed by this source is a
// retry and goes on to replay. toErr is why the destination refuses (ErrAccountNotFound,
// ErrAccountClosed), for the command to decide with: the refusal is then recorded under
// the transfer ID like any other, so a retry cannot turn it into a transfer.
//
// claimed reports whether this call made the claim: only then may the caller let it expire
// (releaseTransferID). A request that found the ID claimed by its source (a retry, or a
// duplicate sent while the first is in flight) and then makes the transfer must keep the
// index for good (keepTransferID): the first request, refused meanwhile, may have given it
// a lifetime, and the transfer would later be neither found by GetTransfer nor kept from
// being made again by another source.
func (l *Ledger) prepareTransfer(ctx context.Context, id, from, to string) (claimed bool, toErr, err error) {
	pr := &transferPrep{id: id, from: from, to: to}
	err = l.claimTransferIDs(ctx, []*transferPrep{pr})
	if err == nil {
		err = pr.verdict()
	}
	if err != nil {
		if pr.claimed {
			l.releaseTransferID(ctx, id, from, true)
		}
		return false, nil, err
	}
	return pr.claimed, pr.toErr, nil
}

// claimTransferIDs makes the claims of preps, and their destination reads, in one round
// trip, setting each one's results; see transferPrep.verdict for what each found. On a
// store error the claims that were made are marked claimed all the same, for the caller to
// release.
func (l *Ledger) claimTransferIDs(ctx context.Context, preps []*transferPrep) error {
	pipe := l.store.rdb.Pipeline()
	takes := make([]func(), len(preps))
	now := l.cfg.Clock()
	for i, pr := range preps {
		takes[i] = pr.queue(ctx, pipe, l.store.keys, now)
	}
	_, err := pipe.Exec(ctx)
	for _, take := range takes {
		take()
	}
	if err != nil {
		return storeErr(ctx, err)
	}
	return nil
}

// releaseIndexScript gives a transfer ID's index entry the lifetime ARGV[2] (ms), or deletes
// it (ARGV[2] empty), if it still names the source ARGV[1].
var releaseIndexScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])`)

// releaseTransferID gives up, after the idempotency TTL, the claim prepareTransfer made for a
// transfer that was not made: refused (its refusal is kept under the ID that long), or failed
// before its commit. Until then GetTransfer answers ErrNotFound and no other source can take
// the ID — a duplicate of the request may still be in flight and make the transfer; that is
// why the claim expires rather than being deleted (a delete would let another source claim
// the ID in between, and two transfers would share it). A transfer with the ID keeps the
// index for good: the release checks for it after setting the lifetime, the duplicate that
// made it takes the lifetime off after its commit (keepTransferID), so whichever runs last
// sees the other.
//
// An ID nobody else names (named false: picked at random by the ledger, or derived from a
// hold, which only that hold's captures name) has no duplicate in flight elsewhere: its claim
// is simply deleted.
func (l *Ledger) releaseTransferID(ctx context.Context, id, from string, named bool) {
	l.releaseTransferIDs(ctx, []transferClaim{{id: id, from: from, named: named}})
}

// transferClaim is a transfer ID claimed for the source from; named as for releaseTransferID.
type transferClaim struct {
	id, from string
	named    bool
}

// releaseTransferIDs is releaseTransferID for several claims, in a few round trips whatever
// their number (an atomic batch's).
func (l *Ledger) releaseTransferIDs(ctx context.Context, claims []transferClaim) {
	ks := l.store.keys
	var named []transferClaim
	var unnamed [][]any // script calls: keys, args
	for _, c := range claims {
		if c.named {
			named = append(named, c)
		} else {
			unnamed = append(unnamed, []any{ks.transferIndex(c.id), c.from, ""})
		}
	}
	l.runEach(ctx, releaseIndexScript, unnamed)
	// made reports, per claim, whether its transfer exists (unknown counts as made: keep
	// the index).
	made := func(cs []transferClaim) []bool {
		pipe := l.store.rdb.Pipeline()
		exists := make([]*redis.BoolCmd, len(cs))
		for i, c := range cs {
			exists[i] = pipe.HExists(ctx, ks.transfer(ks.partition(c.from), c.id), "id")
		}
		_, _ = pipe.Exec(ctx)
		out := make([]bool, len(cs))
		for i, e := range exists {
			out[i] = e.Err() != nil || e.Val()
		}
		return out
	}
	var open []transferClaim
	for i, m := range made(named) {
		if !m {
			open = append(open, named[i])
		}
	}
	if len(open) == 0 {
		return
	}
	ttl := l.cfg.IdempotencyTTL.Milliseconds()
	calls := make([][]any, len(open))
	for i, c := range open {
		calls[i] = []any{ks.transferIndex(c.id), c.from, ttl}
	}
	if !l.runEach(ctx, releaseIndexScript, calls) {
		return
	}
	var keep []transferClaim
	for i, m := range made(open) {
		if m {
			keep = append(keep, open[i])
		}
	}
	l.keepTransferIDs(ctx, keep)
}

// runEach runs script once per call ({key, args...}) in one pipeline and reports whether
// every call ran without an error. It sends EVAL, which needs no script cache: these are
// the rare paths (a refused or failed transfer, a retried one), where the script's few
// hundred bytes cost nothing worth a second round trip on NOSCRIPT.
func (l *Ledger) runEach(ctx context.Context, script *redis.Script, calls [][]any) bool {
	if len(calls) == 0 {
		return true
	}
	pipe := l.store.rdb.Pipeline()
	for _, c := range calls {
		script.Eval(ctx, pipe, []string{c[0].(string)}, c[1:]...)
	}
	_, err := pipe.Exec(ctx)
	return err == nil || errors.Is(err, redis.Nil) // Exec reports the first command's error
}

// unmade reports whether err says a request made nothing: refused, or failed before its
// commit — not an unknown outcome (a store outage, a bug, a cancellation), after which the
// commit may still have happened.
func unmade(err error) bool {
	return err != nil && !errors.Is(err, ErrStoreUnavailable) && !errors.Is(err, ErrInternal) && !isCtxErr(err)
}

// keepIndexScript makes a transfer ID's index name the source for good: it sets a missing
// index, and takes the lifetime off one a refusal of the same source left (that refusal
// expired, and the ID was used again).
var keepIndexScript = redis.NewScript(`
local owner = redis.call('GET', KEYS[1])
if owner == false then return redis.call('SET', KEYS[1], ARGV[1]) end
if owner == ARGV[1] then return redis.call('PERSIST', KEYS[1]) end
return 0`)

// keepTransferID puts back the index of a transfer made by a request that did not claim its
// ID (see prepareTransfer), in case the request that claimed it was refused and gave it up.
// Like the release, it is best effort: a Redis error leaves the index as it is.
func (l *Ledger) keepTransferID(ctx context.Context, id, from string) {
	l.keepTransferIDs(ctx, []transferClaim{{id: id, from: from}})
}

// keepTransferIDs is keepTransferID for several IDs, in one round trip.
func (l *Ledger) keepTransferIDs(ctx context.Context, claims []transferClaim) {
	calls := make([][]any, len(claims))
	for i, c := range claims {
		calls[i] = []any{l.store.keys.transferIndex(c.id), c.from}
	}
	l.runEach(ctx, keepIndexScript, calls)
}

// GetTransfer returns a transfer, or ErrNotFound.
func (l *Ledger) GetTransfer(ctx context.Context, id string) (Transfer, error) {
	if err := ValidateID("transfer id", id); err != nil {
		return Transfer{}, err
	}
	from, err := l.store.rdb.Get(ctx, l.store.keys.transferIndex(id)).Result()
	if errors.Is(err, redis.Nil) {
		return Transfer{}, fmt.Errorf("%w: transfer %s", ErrNotFound, id)
	}
	if err != nil {
		return Transfer{}, storeErr(ctx, err)
	}
	return l.transferIn(ctx, l.store.keys.partition(from), id)
}

// transferIn reads the record of transfer id from partition p (its source's), or
// ErrNotFound. Who knows the source reads it here directly, without the index.
func (l *Ledger) transferIn(ctx context.Context, p int, id string) (Transfer, error) {
	v, err := l.store.rdb.HGetAll(ctx, l.store.keys.transfer(p, id)).Result()
	if err != nil {
		return Transfer{}, storeErr(ctx, err)
	}
	return parseTransfer(id, v)
}

// parseTransfer reads the record v of transfer id, or returns ErrNotFound when v is none: no
// key, or only a refusal recorded under the ID (a record without "id": claimed, but its
// debit never committed).
func parseTransfer(id string, v map[string]string) (Transfer, error) {
	if v["id"] == "" {
		return Transfer{}, fmt.Errorf("%w: transfer %s", ErrNotFound, id)
	}
	t := Transfer{ID: v["id"], From: v["from"], To: v["to"], Currency: v["currency"], Status: v["status"], Reason: v["reason"], HoldID: v["hold_id"]}
	bad := func(f string, err error) error {
		return fmt.Errorf("%w: corrupt transfer record %s: %s: %w", ErrInternal, t.ID, f, err)
	}
	var err error
	if t.Amount, err = strconv.ParseInt(v["amount"], 10, 64); err != nil {
		return Transfer{}, bad("amount", err)
	}
	if t.CreatedAt, err = time.Parse(time.RFC3339Nano, v["created_at"]); err != nil {
		return Transfer{}, bad("created_at", err)
	}
	if c := v["completed_at"]; c != "" {
		ct, err := time.Parse(time.RFC3339Nano, c)
		if err != nil {
			return Transfer{}, bad("completed_at", err)
		}
		t.CompletedAt = &ct
	}
	if md := v["metadata"]; md != "" {
		if err := json.Unmarshal([]byte(md), &t.Metadata); err != nil {
			return Transfer{}, bad("metadata", err)
		}
	}
	return t, nil
}

// driveTransfer runs the remaining steps of pending cross-partition transfer id, whose
// record is in partition p (see drive), and returns the transfer as it stands afterwards.
func (l *Ledger) driveTransfer(ctx context.Context, p int, id string) (Transfer, error) {
	t, err := l.transferIn(ctx, p, id)
	if err != nil || t.Status != TransferPending {
		return t, err
	}
	return l.drive(ctx, t, nil)
}

// drive runs the remaining steps of pending transfer t: credit the destination (recorded
// once, whoever runs it), then mark it completed, or refund the source when the credit was
// refused. Every step is idempotent, so the request, the process manager and the sweep may
// all drive one transfer at once. to, when set, is the destination as the caller read it:
// the credit's first attempt decides on it without reading (see request.pre).
func (l *Ledger) drive(ctx context.Context, t Transfer, to *snapshot) (Transfer, error) {
	credit := recordRef{key: l.store.keys.transferStep(l.store.keys.partition(t.To), t.ID, "credit"), kind: "mark"}
	var pre map[string]snapshot
	if to != nil {
		pre = map[string]snapshot{t.To: *to}
	}
	rc, err := l.submitPre(ctx, transferCredit{T: t, Complete: l.creditCompletes()}, credit, "credit", pre)
	if err != nil {
		return t, err
	}
	var out creditOutcome
	if err := json.Unmarshal(rc.Body, &out); err != nil {
		return t, fmt.Errorf("%w: decode credit outcome of %s: %w", ErrInternal, t.ID, err)
	}
	p := l.store.keys.partition(t.From)
	if out.CompletedAt != nil { // completed by the credit's commit (this driver's or another's)
		t.Status, t.CompletedAt = TransferCompleted, out.CompletedAt
		return t, nil
	}
	if out.Credited {
		now := l.cfg.Clock().UTC()
		n, err := completeScript.Run(ctx, l.store.rdb, []string{l.store.keys.transfer(p, t.ID), l.store.keys.transfersPending(p)},
			now.Format(time.RFC3339Nano), t.ID).Int()
		if err != nil {
			return t, storeErr(ctx, err)
		}
		if n == 0 { // another driver finished it first
			return l.transferIn(ctx, p, t.ID)
		}
		t.Status, t.CompletedAt = TransferCompleted, &now
		l.metrics.transferCompleted()
		return t, nil
	}
	refund := recordRef{key: l.store.keys.transferStep(p, t.ID, "refund"), kind: "mark"}
	rc, err = l.submitRef(ctx, transferRefund{T: t, Reason: out.Reason}, refund, "refund")
	if err != nil {
		return t, err
	}
	if rc.Replayed {
		return l.transferIn(ctx, p, t.ID)
	}
	var done Transfer
	if err := json.Unmarshal(rc.Body, &done); err != nil {
		return t, fmt.Errorf("%w: decode refund of %s: %w", ErrInternal, t.ID, err)
	}
	return done, nil
}

// creditCompletes reports whether a cross-partition transfer's credit also completes it in
// the same commit (transferCredit.Complete): on a single Redis, where one script may write
// the source partition's record; never on Cluster. The process manager relies on it too: a
// TransferCredited then needs no completion step.
func (l *Ledger) creditCompletes() bool { return l.store.single }

// captureTransferID is the ID of the transfer a capture with a destination makes.
func captureTransferID(account, hold string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + hold))
	return "hold-" + hex.EncodeToString(sum[:16])
}

// driving names the transfers this process's requests are driving inline (CreateTransfer),
// so that the transfer process manager of the same process, which sees their events while
// the request still runs, waits for the request instead of running the same steps beside it
// (every step is idempotent, so that would only cost round trips). Process managers of
// other processes do not see it; they race harmlessly, as before.
type driving struct {
	mu      sync.Mutex
	ids     map[string]chan struct{}
	waiters int // process managers waiting in wait (tests read it)
}

// start registers a transfer ID being driven and returns the function that ends it. A
// second request with the same ID while the first runs is not registered again.
func (d *driving) start(id string) (end func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.ids[id]; ok {
		return func() {}
	}
	done := make(chan struct{})
	d.ids[id] = done
	return func() {
		d.mu.Lock()
		delete(d.ids, id)
		d.mu.Unlock()
		close(done)
	}
}

// wait returns once no request of this process drives transfer id, or when ctx ends.
func (d *driving) wait(ctx context.Context, id string) error {
	d.mu.Lock()
	done, ok := d.ids[id]
	if ok {
		d.waiters++
	}
	d.mu.Unlock()
	if !ok {
		return nil
	}
	defer func() {
		d.mu.Lock()
		d.waiters--
		d.mu.Unlock()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
