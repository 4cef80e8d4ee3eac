package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MaxBatchOps bounds the operations of one batch.
const MaxBatchOps = 1000

// Batch operation types.
const (
	OpDeposit    = "deposit"
	OpWithdrawal = "withdrawal"
	OpTransfer   = "transfer"
	OpHold       = "hold"
	OpCapture    = "capture"
	OpVoid       = "void"
)

// ErrBatchAborted is the result of every other operation of an atomic batch that failed.
var ErrBatchAborted = errors.New("batch aborted: another operation of the atomic batch failed")

// BatchOp is one operation of a batch. ID is optional: a deposit's, withdrawal's,
// capture's or void's idempotency key, a transfer's or hold's ID.
type BatchOp struct {
	Type     string
	ID       string
	Account  string // deposit, withdrawal, hold, capture, void
	From, To string // transfer; To also for a capture that moves the money on
	Hold     string // capture, void: the hold's ID
	Currency string
	Amount   int64         // a capture's 0 takes the whole hold
	Timeout  time.Duration // hold
	Metadata map[string]string

	randomID bool // ID was picked by Batch
}

// BatchResult is the outcome of one operation: its response body, or its error.
type BatchResult struct {
	Body json.RawMessage
	Err  error
}

// validate returns an error wrapping ErrInvalid when the operation is malformed.
func (op BatchOp) validate() error {
	switch op.Type {
	case OpDeposit, OpWithdrawal:
		if op.ID != "" {
			if err := ValidateIdempotencyKey(op.ID); err != nil {
				return err
			}
		}
		return validateMoney(op.Account, op.Currency, op.Amount)
	case OpTransfer:
		return TransferRequest{ID: op.ID, From: op.From, To: op.To, Currency: op.Currency, Amount: op.Amount, Metadata: op.Metadata}.Validate()
	case OpHold:
		return PlaceHold{Account: op.Account, ID: op.ID, Currency: op.Currency, Amount: op.Amount, Timeout: op.Timeout}.Validate()
	case OpCapture, OpVoid:
		if op.ID != "" {
			if err := ValidateIdempotencyKey(op.ID); err != nil {
				return err
			}
		}
		switch {
		case op.Currency != "":
			return invalidf("currency does not apply to a %s: the hold has one", op.Type)
		case op.Type == OpCapture:
			return validateCapture(op.Account, op.Hold, op.Amount, op.To)
		case op.Amount != 0:
			return invalidf("amount does not apply to a void")
		case op.To != "":
			return invalidf("to does not apply to a void")
		}
		return validateHoldIDs(op.Account, op.Hold)
	default:
		return invalidf("operation type must be deposit, withdrawal, transfer, hold, capture or void")
	}
}

// Batch runs up to MaxBatchOps operations. Operations without an ID of type transfer or
// hold get a random one (as they would alone).
//
// Not atomic: every operation runs as if sent alone and has its own result; operations that
// touch a common account run in the given order, unrelated ones concurrently.
//
// Atomic: every account must be in one partition (else ErrBatchNotAtomic, see
// co-location in docs/transfers.md); the operations are decided in order and committed by
// one script, all or nothing. When one fails, its result carries its error and every other
// result ErrBatchAborted; nothing is written. opts.IdempotencyKey makes a retry of the whole
// atomic batch replay its results.
//
// Captures and voids (OpCapture, OpVoid) resolve holds in bulk: atomic, every hold of the
// list is resolved or none; not atomic, each hold has its own result (ErrNotFound,
// ErrHoldNotPending, ErrAmountExceedsHold, ...). A capture whose To is in another partition
// is a cross-partition transfer, so it is refused in an atomic batch (ErrBatchNotAtomic)
// like any other account of another partition. Two captures or voids of one hold in a
// batch are malformed.
//
// It returns an error (and no results) only for a malformed batch.
func (l *Ledger) Batch(ctx context.Context, atomic bool, ops []BatchOp, opts WriteOptions) ([]BatchResult, bool, error) {
	if len(ops) == 0 || len(ops) > MaxBatchOps {
		return nil, false, invalidf("a batch has 1..%d operations", MaxBatchOps)
	}
	ids := map[string]int{} // an operation's record, by kind and scope
	for i := range ops {
		if atomic && (ops[i].Type == OpTransfer || ops[i].Type == OpHold) && ops[i].ID == "" {
			ops[i].ID, ops[i].randomID = newToken(), true // its records are written by the batch's script
		}
		if err := ops[i].validate(); err != nil {
			return nil, false, fmt.Errorf("operations[%d]: %w", i, err)
		}
		if t := ops[i].Type; t == OpCapture || t == OpVoid {
			// A hold is resolved once: a second capture or void of it in the same batch
			// could only be refused (and in an atomic batch would abort the rest).
			scope := "resolve\x00" + ops[i].Account + "\x00" + ops[i].Hold
			if j, dup := ids[scope]; dup {
				return nil, false, invalidf("operations[%d] and operations[%d] both capture or void hold %q of %s", j, i, ops[i].Hold, ops[i].Account)
			}
			ids[scope] = i
		}
		if ops[i].ID == "" {
			continue
		}
		scope := ops[i].Type + "\x00" + ops[i].Account + "\x00" + ops[i].ID
		switch ops[i].Type {
		case OpTransfer:
			scope = "transfer\x00" + ops[i].ID
		case OpDeposit, OpWithdrawal, OpCapture, OpVoid: // idempotency keys, one namespace per account
			scope = "key\x00" + ops[i].Account + "\x00" + ops[i].ID
		}
		if j, dup := ids[scope]; dup {
			return nil, false, invalidf("operations[%d] and operations[%d] share the id %q", j, i, ops[i].ID)
		}
		ids[scope] = i
	}
	if atomic {
		return l.atomicBatch(ctx, ops, opts)
	}
	return l.looseBatch(ctx, ops), false, nil
}

// looseBatch runs each operation on its own. Operations that touch a common account
// (directly, or through other operations: a transfer touches both its accounts) run one
// after another in the batch's order, so every account sees its operations in that order;
// the other groups run concurrently, and their writes meet in the partitions' group commits.
func (l *Ledger) looseBatch(ctx context.Context, ops []BatchOp) []BatchResult {
	results := make([]BatchResult, len(ops))
	groups := newSliceSet()
	for _, op := range ops {
		groups.join(op.touches())
	}
	groups.number()
	chains := map[int][]int{}
	var order []int
	for i, op := range ops {
		g := groups.of(op.touches()[0])
		if _, ok := chains[g]; !ok {
			order = append(order, g)
		}
		chains[g] = append(chains[g], i)
	}
	var wg sync.WaitGroup
	for _, g := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, i := range chains[g] {
				results[i] = l.runOp(ctx, ops[i])
			}
		}()
	}
	wg.Wait()
	return results
}

// touches returns the accounts the operation writes.
func (op BatchOp) touches() []string {
	switch {
	case op.Type == OpTransfer:
		return []string{op.From, op.To}
	case op.Type == OpCapture && op.To != "":
		return []string{op.Account, op.To}
	}
	return []string{op.Account}
}

// runOp runs one operation alone.
func (l *Ledger) runOp(ctx context.Context, op BatchOp) BatchResult {
	var (
		rc  Receipt
		err error
	)
	switch op.Type {
	case OpDeposit:
		rc, err = l.Deposit(ctx, Deposit{Account: op.Account, Currency: op.Currency, Amount: op.Amount}, WriteOptions{IdempotencyKey: op.ID})
	case OpWithdrawal:
		rc, err = l.Withdraw(ctx, Withdraw{Account: op.Account, Currency: op.Currency, Amount: op.Amount}, WriteOptions{IdempotencyKey: op.ID})
	case OpHold:
		rc, err = l.PlaceHold(ctx, PlaceHold{Account: op.Account, ID: op.ID, Currency: op.Currency, Amount: op.Amount, Timeout: op.Timeout})
	case OpCapture:
		rc, err = l.CaptureHold(ctx, op.Account, op.Hold, op.Amount, op.To, WriteOptions{IdempotencyKey: op.ID})
	case OpVoid:
		rc, err = l.VoidHold(ctx, op.Account, op.Hold, WriteOptions{IdempotencyKey: op.ID})
	case OpTransfer:
		var res TransferResult
		res, err = l.CreateTransfer(ctx, TransferRequest{ID: op.ID, From: op.From, To: op.To, Currency: op.Currency, Amount: op.Amount, Metadata: op.Metadata})
		if err == nil {
			rc.Body, err = json.Marshal(res.Transfer)
		}
	}
	if err != nil {
		return BatchResult{Err: err}
	}
	return BatchResult{Body: rc.Body}
}

// batchCmd is an atomic batch: its operations decided in order on one decision.
type batchCmd struct {
	Ops  []BatchOp
	accs []string
}

func (c batchCmd) accounts() []string { return c.accs }

// probes returns the records of the holds the batch captures or voids, so that one never
// placed is refused ErrNotFound as it would be alone (see prober).
func (c batchCmd) probes(k keyspace) []string {
	var keys []string
	for _, op := range c.Ops {
		if op.Type == OpCapture || op.Type == OpVoid {
			keys = append(keys, holdKey(k, op.Account, op.Hold))
		}
	}
	return keys
}

// batchFailure is the error of an atomic batch: which operation failed and why.
type batchFailure struct {
	index int
	err   error
}

func (f *batchFailure) Error() string { return fmt.Sprintf("operations[%d]: %v", f.index, f.err) }
func (f *batchFailure) Unwrap() error { return f.err }

func (c batchCmd) decide(d *decision) (any, error) {
	bodies := make([]json.RawMessage, len(c.Ops))
	for i, op := range c.Ops {
		raw, err := c.decideOp(d, op)
		if err != nil {
			return nil, &batchFailure{index: i, err: err}
		}
		bodies[i] = raw
	}
	return bodies, nil
}

// decideOp decides one operation of an atomic batch and returns its encoded response. It
// also adds the record that makes the operation's ID unusable for another request later
// (written by the same script): the record the operation sent alone would write.
func (c batchCmd) decideOp(d *decision, op BatchOp) (json.RawMessage, error) {
	p := d.keys.partition(c.accs[0])
	// recorded encodes body once; with a key it also records it there under the
	// fingerprint of what (the request sent alone), with the lifetime of an idempotency key
	// when ttl is set.
	recorded := func(body any, err error, key string, what any, ttl bool) (json.RawMessage, error) {
		if err != nil {
			return nil, err
		}
		raw, err := encodeBody(body)
		if err != nil || key == "" {
			return raw, err
		}
		d.guard(key)
		d.write("HSET", key, "fp", fingerprint(what), "body", string(raw))
		if ttl {
			d.write("PEXPIRE", key, d.idemTTL.Milliseconds())
		}
		return raw, nil
	}
	// idem is the record of the operation's idempotency key, or "" without one.
	idem := ""
	if op.ID != "" {
		idem = d.keys.idem(p, op.Account, op.ID)
	}
	switch op.Type {
	case OpDeposit, OpWithdrawal:
		var cmd command = Deposit{Account: op.Account, Currency: op.Currency, Amount: op.Amount}
		if op.Type == OpWithdrawal {
			cmd = Withdraw{Account: op.Account, Currency: op.Currency, Amount: op.Amount}
		}
		body, err := cmd.decide(d)
		return recorded(body, err, idem, cmd, true)
	case OpHold:
		cmd := PlaceHold{Account: op.Account, ID: op.ID, Currency: op.Currency, Amount: op.Amount, Timeout: op.Timeout}
		body, err := cmd.decide(d)
		return recorded(body, err, d.keys.hold(p, op.Account, op.ID), cmd, false)
	case OpCapture, OpVoid:
		// With a key: the record a capture or void sent alone with it writes, so that one
		// sent later with the key replays this answer.
		cmd := op.resolveCmd()
		body, err := cmd.decide(d)
		return recorded(body, err, idem, cmd, true)
	default: // OpTransfer
		t := Transfer{ID: op.ID, From: op.From, To: op.To, Currency: op.Currency, Amount: op.Amount, Metadata: op.Metadata}
		body, err := transferCmd{T: t, SameTo: true}.decide(d)
		return recorded(body, err, d.keys.transfer(p, op.ID), t, false)
	}
}

// resolveCmd returns the command of a capture or void operation of an atomic batch: the one
// Ledger.CaptureHold or VoidHold would submit (the same fingerprint). A capture's To is in
// the batch's partition, so it is credited in the same script.
func (op BatchOp) resolveCmd() command {
	if op.Type == OpVoid {
		return VoidHold{Account: op.Account, HoldID: op.Hold}
	}
	c := CaptureHold{Account: op.Account, HoldID: op.Hold, Amount: op.Amount, To: op.To}
	if op.To != "" {
		c.TransferID, c.sameTo = captureTransferID(op.Account, op.Hold), true
	}
	return c
}

// transferID returns the ID of the transfer the operation starts and whether the client
// named it, or "" for an operation that starts none.
func (op BatchOp) transferID() (id, from string, named bool) {
	switch {
	case op.Type == OpTransfer:
		return op.ID, op.From, !op.randomID
	case op.Type == OpCapture && op.To != "":
		return captureTransferID(op.Account, op.Hold), op.Account, false // as Ledger.CaptureHold
	}
	return "", "", false
}

// atomicBatch commits the operations in one script.
func (l *Ledger) atomicBatch(ctx context.Context, ops []BatchOp, opts WriteOptions) ([]BatchResult, bool, error) {
	var accs []string
	seen := map[string]bool{}
	for _, op := range ops {
		for _, a := range op.touches() {
			if !seen[a] {
				seen[a] = true
				accs = append(accs, a)
			}
		}
	}
	p := l.store.keys.partition(accs[0])
	for _, a := range accs {
		if l.store.keys.partition(a) != p {
			return nil, false, fmt.Errorf("%w: accounts %s and %s are in different partitions (co-locate them with a placement tag)", ErrBatchNotAtomic, accs[0], a)
		}
	}
	// Claim the transfer IDs (of transfers and of captures with a to) first, all in one round
	// trip; a batch that fails lets the claims it made expire, and one that commits keeps for
	// good the IDs it did not claim (see prepareTransfer). Both accounts of each are in the
	// batch's partition: the batch decides on the destination itself, so the claims read
	// no destination.
	var (
		preps []*transferPrep
		at    []int // preps[j] is the claim of ops[at[j]]
	)
	for i, op := range ops {
		if id, from, _ := op.transferID(); id != "" {
			preps = append(preps, &transferPrep{id: id, from: from})
			at = append(at, i)
		}
	}
	release := func() {
		var claims []transferClaim
		for j, pr := range preps {
			if pr.claimed {
				id, from, named := ops[at[j]].transferID()
				claims = append(claims, transferClaim{id: id, from: from, named: named})
			}
		}
		l.releaseTransferIDs(ctx, claims)
	}
	if len(preps) > 0 {
		err := l.claimTransferIDs(ctx, preps)
		for j, pr := range preps {
			if err == nil {
				err = pr.verdict()
			}
			if err != nil {
				// The first operation whose ID is another source's (or the store error,
				// charged to the first transfer) fails the batch; every claim made is let go.
				release()
				return l.failBatch(ops, at[j], err), false, nil
			}
		}
	}
	rc, err := l.submit(ctx, batchCmd{Ops: ops, accs: accs}, opts)
	var bf *batchFailure
	if errors.As(err, &bf) {
		release()
		return l.failBatch(ops, bf.index, bf.err), IsReplayed(err), nil
	}
	if err != nil {
		return nil, false, err
	}
	if !rc.Replayed {
		var keep []transferClaim
		for j, pr := range preps {
			if !pr.claimed {
				id, from, _ := ops[at[j]].transferID()
				keep = append(keep, transferClaim{id: id, from: from})
			}
		}
		l.keepTransferIDs(ctx, keep)
	}
	bodies, err := splitArray(rc.Body)
	if err != nil || len(bodies) != len(ops) {
		return nil, false, fmt.Errorf("%w: decode batch results: %d of %d, %v", ErrInternal, len(bodies), len(ops), err)
	}
	out := make([]BatchResult, len(ops))
	for i, b := range bodies {
		out[i] = BatchResult{Body: b}
	}
	return out, rc.Replayed, nil
}

// failBatch returns the results of an atomic batch whose operation i failed with err.
func (l *Ledger) failBatch(ops []BatchOp, i int, err error) []BatchResult {
	out := make([]BatchResult, len(ops))
	for j := range out {
		out[j] = BatchResult{Err: ErrBatchAborted}
	}
	out[i] = BatchResult{Err: err}
	return out
}
