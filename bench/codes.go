package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/ledger"
)

// Outcome says what an answer means for the money: whether the write happened.
type Outcome int

const (
	// Applied: the operation succeeded.
	Applied Outcome = iota
	// Rejected: refused for a reason the load expects (insufficient funds); nothing written.
	Rejected
	// Refused: failed, and nothing was written (version conflict after every retry, lease
	// not taken, overloaded, any other 4xx). It counts as an error.
	Refused
	// Unknown: failed, and the write may or may not have happened (store unavailable,
	// internal error, timeout, transport error). It counts as an error.
	Unknown
)

// Answer is a classified answer: Code is the HTTP API's problem code (insufficient_funds,
// version_conflict, lock_unavailable, store_unavailable, ...), "" for success.
type Answer struct {
	Outcome Outcome
	Code    string
	Status  int // the HTTP status the API answers (or answered) with
}

// ProblemError is a problem+json answer of a running server.
type ProblemError struct {
	Status int
	Code   string
	Detail string
}

// Error returns the status, code and detail.
func (e *ProblemError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Detail)
}

// TransportError is a request that got no HTTP answer (connection refused or cut, timeout).
type TransportError struct{ Err error }

// Error returns the cause prefixed with "transport".
func (e *TransportError) Error() string { return "transport: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *TransportError) Unwrap() error { return e.Err }

// answerFor classifies an HTTP problem answer.
func answerFor(status int, code string) Answer {
	a := Answer{Code: code, Status: status}
	switch {
	case code == "insufficient_funds":
		a.Outcome = Rejected
	case status < 500 || code == "lock_unavailable" || code == "overloaded":
		a.Outcome = Refused // nothing written (the API documents these 503s as such)
	default:
		a.Outcome = Unknown
	}
	return a
}

// retryable reports whether asking again may turn the answer around: its outcome is
// unknown, or the refusal says "not now" (lock_unavailable, overloaded, version_conflict).
func (a Answer) retryable() bool {
	switch {
	case a.Outcome == Unknown:
		return true
	case a.Outcome != Refused:
		return false
	}
	return a.Code == "lock_unavailable" || a.Code == "overloaded" || a.Code == "version_conflict"
}

// retryDelay is the wait before retry n (n ≥ 1) of an operation whose answer was
// retryable or that has not ended yet: 20 ms doubling up to 250 ms, jittered.
func retryDelay(n int) time.Duration {
	return backoff.Policy{Base: 20 * time.Millisecond, Max: 250 * time.Millisecond, Jitter: 0.5}.Delay(n)
}

// Classify returns what err means: nil is Applied; a ProblemError (a running server's
// answer) is classified by its status and code; a TransportError is Unknown "transport"; a
// ledger error by the API's answer to it, looked up in package handlers' error table (so
// there is one error→HTTP table); a cancellation is Unknown "canceled"; anything else
// Unknown "internal", as the API answers an error it does not know.
func Classify(err error) Answer {
	if err == nil {
		return Answer{Outcome: Applied, Status: http.StatusOK}
	}
	var pe *ProblemError
	if errors.As(err, &pe) {
		return answerFor(pe.Status, pe.Code)
	}
	var te *TransportError
	if errors.As(err, &te) {
		return Answer{Outcome: Unknown, Code: "transport"}
	}
	status, code, known := handlers.ProblemCode(err)
	if !known && errors.Is(err, context.Canceled) && !errors.Is(err, ledger.ErrInternal) {
		return Answer{Outcome: Unknown, Code: "canceled"}
	}
	return answerFor(status, code)
}
