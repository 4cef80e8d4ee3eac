package lock

import (
	"errors"
	"fmt"

	"github.com/go-redsync/redsync/v4"
)

// NotAcquiredError is the error Do, TryDo, Acquire and TryAcquire return when no lease was
// obtained (not when the caller's context ended). errors.Is(err, ErrNotAcquired) holds for
// it. Busy tells contention from an outage, so that a caller can log "held by someone
// else" quietly and "the masters did not answer" loudly without reading strings.
type NotAcquiredError struct {
	// Key is the key that was not acquired (without Config.Prefix).
	Key string
	// Held is true when the key is held by another holder: by another goroutine of this
	// process, or the masters that answered the last attempt said it is taken and every
	// master answered. It is false when a master did not answer (down, unreachable,
	// slower than AttemptTimeout), when the lease came back with too little validity, or
	// when the Locker was closed: an outage, not contention.
	Held bool

	msg   string
	cause error // a lock error behind it (errClosed), never a redsync error
}

// Error returns "lock: not acquired: " followed by the key and the reason.
func (e *NotAcquiredError) Error() string { return ErrNotAcquired.Error() + ": " + e.msg }

// Unwrap returns ErrNotAcquired, and the Locker's own cause when there is one (a closed
// Locker). Errors of redsync are not exposed.
func (e *NotAcquiredError) Unwrap() []error {
	if e.cause != nil {
		return []error{ErrNotAcquired, e.cause}
	}
	return []error{ErrNotAcquired}
}

// Busy reports whether the key is held by another holder (Held). Callers that do not
// import lock can test for it with errors.As and an interface{ Busy() bool }.
func (e *NotAcquiredError) Busy() bool { return e.Held }

// notAcquired returns a *NotAcquiredError for key with the given reason.
func notAcquired(key string, held bool, msg string) error {
	return &NotAcquiredError{Key: key, Held: held, msg: msg}
}

// closedError is the NotAcquiredError of a Locker that was closed.
func closedError(key string) error {
	return &NotAcquiredError{Key: key, msg: fmt.Sprintf("%q: %v", key, errClosed), cause: errClosed}
}

// heldElsewhere reports whether the error of a failed acquisition attempt says that the
// key is taken, with every master answering: redsync reports a key taken on a majority
// as *ErrTaken, and otherwise joins one error per refusing master, ErrNodeTaken for a
// "no" and RedisError for a master that failed to answer.
func heldElsewhere(err error) bool {
	var taken *redsync.ErrTaken
	if errors.As(err, &taken) {
		return true
	}
	var down *redsync.RedisError
	if errors.As(err, &down) {
		return false
	}
	var nodeTaken *redsync.ErrNodeTaken
	return errors.As(err, &nodeTaken)
}
