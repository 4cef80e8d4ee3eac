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
	// ErrInsufficientFunds is returned when a withdrawal would take the available balance of
	// an account without allow_negative below zero.
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
)

// invalidf returns an error wrapping ErrInvalid with a formatted detail.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
