package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
)

// A request with an idempotency key (a client's Idempotency-Key, a hold's or a transfer's
// ID) that is refused for what the ledger holds — insufficient funds, an account that is
// missing or closed, a hold that is not pending — records its refusal under the key, in the
// same atomic step and with the same version check as a success would. A later request with
// the key replays the refusal instead of deciding again.
//
// Without it a refusal would be a promise the ledger cannot keep: a first attempt still in
// flight (stuck in a paused process, or queued behind a slow commit) could be decided after
// the client's retry was refused, when the money had arrived meanwhile, and apply a request
// whose client was told it failed. Stripe's idempotency layer and TigerBeetle's
// id_already_failed make the same choice.
//
// Only the refusals a decision makes on the ledger's state are recorded (the list below).
// Malformed requests (400) are refused before anything is read and record nothing, and
// outages, conflicts and cancellations (409 version_conflict, 503, a timeout) say nothing
// final: a retry with the key decides them.

// recordedRefusals names every error a decision may record, by a code stored in the
// record. The codes are part of the data format: never change one, only add.
var recordedRefusals = []struct {
	code string
	err  error
}{
	{"insufficient_funds", ErrInsufficientFunds},
	{"account_not_found", ErrAccountNotFound},
	{"account_closed", ErrAccountClosed},
	{"account_exists", ErrAccountExists},
	{"account_not_empty", ErrAccountNotEmpty},
	{"amount_overflow", ErrOverflow},
	{"hold_not_pending", ErrHoldNotPending},
	{"amount_exceeds_hold", ErrAmountExceedsHold},
	{"not_found", ErrNotFound},
	{"alert_exists", ErrAlertExists},
	{"too_many_alerts", ErrTooManyAlerts},
	{"too_many_overdraft_limits", ErrTooManyOverdraftLimits},
}

// ReplayedError is a refusal answered from the record of an earlier request with the same
// idempotency key. It reads as the first refusal did (errors.Is finds the same sentinel,
// Error returns the same text); handlers mark the answer Idempotent-Replayed.
type ReplayedError struct {
	err error // the sentinel
	msg string
}

func (e *ReplayedError) Error() string { return e.msg }

// Unwrap returns the sentinel of the recorded refusal.
func (e *ReplayedError) Unwrap() error { return e.err }

// IsReplayed reports whether err is a refusal replayed from an earlier request's record.
func IsReplayed(err error) bool {
	var r *ReplayedError
	return errors.As(err, &r)
}

// refusal is the stored form of a recorded refusal.
type refusal struct {
	Code   string `json:"code"`
	Detail string `json:"detail"`       // the error's text
	Op     *int   `json:"op,omitempty"` // an atomic batch: the operation that failed
}

// encodeRefusal returns the record body of err, or false when err is not a refusal a
// decision records.
func encodeRefusal(err error) ([]byte, bool) {
	rf := refusal{Detail: err.Error()}
	var bf *batchFailure
	if errors.As(err, &bf) {
		i := bf.index
		rf.Op, rf.Detail = &i, bf.err.Error()
		err = bf.err
	}
	if errors.Is(err, ErrInternal) {
		return nil, false
	}
	for _, r := range recordedRefusals {
		if errors.Is(err, r.err) {
			rf.Code = r.code
			raw, jerr := json.Marshal(rf)
			return raw, jerr == nil
		}
	}
	return nil, false
}

// decodeRefusal returns the refusal recorded in body, as a *ReplayedError (inside a
// *batchFailure for an atomic batch).
func decodeRefusal(body []byte) error {
	var rf refusal
	if err := json.Unmarshal(body, &rf); err != nil {
		return fmt.Errorf("%w: undecodable refusal record %q: %w", ErrInternal, body, err)
	}
	for _, r := range recordedRefusals {
		if r.code != rf.Code {
			continue
		}
		var err error = &ReplayedError{err: r.err, msg: rf.Detail}
		if rf.Op != nil {
			err = &batchFailure{index: *rf.Op, err: err}
		}
		return err
	}
	return fmt.Errorf("%w: refusal record with unknown code %q", ErrInternal, rf.Code)
}
