package ledger

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on with errors.Is. Handlers map each to one HTTP status.
var (
	// ErrInvalid is returned for malformed input (bad IDs, currencies, amounts). Errors that
	// wrap it carry a human-readable detail.
	ErrInvalid = errors.New("invalid request")
	// ErrAccountNotFound is returned when the account does not exist.
	ErrAccountNotFound = errors.New("account not found")
	// ErrAccountExists is returned when opening an account whose ID is taken.
	ErrAccountExists = errors.New("account exists")
	// ErrInsufficientFunds is returned when a withdrawal, hold or transfer would take the
	// available balance of an account without allow_negative below zero, or below −its
	// overdraft limit in the currency.
	ErrInsufficientFunds = errors.New("insufficient funds")
	// ErrOverflow is returned when a balance would leave the int64 range.
	ErrOverflow = errors.New("amount overflow")
	// ErrVersionConflict is returned when optimistic retries are exhausted.
	ErrVersionConflict = errors.New("version conflict")
	// ErrIdempotencyKeyReused is returned when an idempotency key is presented with a request
	// other than the one it was first used with.
	ErrIdempotencyKeyReused = errors.New("idempotency key reused")
	// ErrLockUnavailable is returned in lock mode when the account's lease could not be taken
	// (or was lost) in time. Nothing was written.
	ErrLockUnavailable = errors.New("lock unavailable")
	// ErrStoreUnavailable is returned when Redis could not be reached. The operation may or
	// may not have been applied; retry with the same idempotency key to find out.
	ErrStoreUnavailable = errors.New("store unavailable")
	// ErrPartitionMismatch is returned by Open when Redis records another partition count.
	ErrPartitionMismatch = errors.New("partition count mismatch")
	// ErrAccountClosed is returned for a write to a closed account.
	ErrAccountClosed = errors.New("account closed")
	// ErrAccountNotEmpty is returned when closing an account that still holds money.
	ErrAccountNotEmpty = errors.New("account not empty")
	// ErrNotFound is returned when a hold or transfer does not exist.
	ErrNotFound = errors.New("not found")
	// ErrHoldNotPending is returned when capturing or voiding a hold that was captured,
	// voided or has expired.
	ErrHoldNotPending = errors.New("hold not pending")
	// ErrAmountExceedsHold is returned when a capture asks for more than the hold holds.
	ErrAmountExceedsHold = errors.New("amount exceeds hold")
	// ErrBatchNotAtomic is returned for an atomic batch whose operations span partitions.
	ErrBatchNotAtomic = errors.New("batch not atomic")
	// ErrOverloaded is returned when an account already has Config.MaxQueue requests waiting
	// in this process. Nothing was written; retry later.
	ErrOverloaded = errors.New("overloaded")
	// ErrInternal marks a bug rather than an outage: a script error, a reply the ledger does
	// not understand, a corrupt snapshot, a panic. It is never retried. Whether a write
	// happened is unknown; a retry with the same idempotency key finds out.
	ErrInternal = errors.New("internal error")
)

// PanicError is returned to every request of a batch whose decision or commit panicked.
// It wraps ErrInternal and carries the panic value and the stack for the log.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("ledger: panic: %v", e.Value) }

// Unwrap returns ErrInternal.
func (e *PanicError) Unwrap() error { return ErrInternal }

// invalidf returns an error wrapping ErrInvalid with a formatted detail.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
