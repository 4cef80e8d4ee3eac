package client

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error is an answer other than 2xx: the API's problem+json body (RFC 9457) with the
// answer's status, request ID and Retry-After. Code is the stable reason to branch on; the
// sentinels below match it through errors.Is. An answer without a problem body (a proxy's
// plain 502, say) has an empty Code and Title set from the status.
type Error struct {
	Status int    // HTTP status
	Code   string // problem code, e.g. "insufficient_funds"; "" without a problem body
	Title  string // short human-readable summary
	Detail string // what happened in this case
	Type   string // problem type URI
	// RequestID is the answer's X-Request-ID header, for the server's logs.
	RequestID string
	// RetryAfter is the answer's Retry-After (whole seconds or an HTTP date), 0 without one.
	RetryAfter time.Duration
}

// Error returns "tally: <status> <code>: <detail>".
func (e *Error) Error() string {
	code := e.Code
	if code == "" {
		code = strings.ToLower(strings.ReplaceAll(http.StatusText(e.Status), " ", "_"))
	}
	msg := fmt.Sprintf("tally: %d %s", e.Status, code)
	if d := e.Detail; d != "" {
		msg += ": " + d
	} else if e.Title != "" {
		msg += ": " + e.Title
	}
	if e.RequestID != "" {
		msg += " (request " + e.RequestID + ")"
	}
	return msg
}

// Is reports whether target is the sentinel of e's code, or ErrUnavailable for a 503. An
// answer without a code matches the sentinel its status implies (401 ErrUnauthorized, 403
// ErrForbidden, 404 ErrNotFound, 405 ErrMethodNotAllowed, 413 ErrPayloadTooLarge,
// 429 ErrRateLimited, 500 ErrInternal).
func (e *Error) Is(target error) bool {
	s, ok := target.(*sentinel)
	if !ok {
		return false
	}
	if s == ErrUnavailable {
		return e.Status == http.StatusServiceUnavailable
	}
	code := e.Code
	if code == "" {
		code = statusCodes[e.Status]
	}
	return code != "" && code == s.code
}

// sentinel is an error that stands for one problem code; *Error.Is matches it.
type sentinel struct{ code string }

func (s *sentinel) Error() string { return "tally: " + s.code }

// Sentinels, one per problem code the API answers with. Use errors.Is(err, ErrX).
var (
	ErrInvalidRequest       error = &sentinel{"invalid_request"}        // 400: malformed or invalid request; nothing written
	ErrUnauthorized         error = &sentinel{"unauthorized"}           // 401: missing or unknown API key
	ErrForbidden            error = &sentinel{"forbidden"}              // 403: the key lacks the scope (e.g. admin)
	ErrAccountNotFound      error = &sentinel{"account_not_found"}      // 404: no such account
	ErrNotFound             error = &sentinel{"not_found"}              // 404: no such transfer, hold or route
	ErrMethodNotAllowed     error = &sentinel{"method_not_allowed"}     // 405
	ErrAccountExists        error = &sentinel{"account_exists"}         // 409: OpenAccount of an existing ID
	ErrVersionConflict      error = &sentinel{"version_conflict"}       // 409: optimistic retries exhausted; nothing written
	ErrIdempotencyKeyReused error = &sentinel{"idempotency_key_reused"} // 409: same key (or transfer/hold ID), other request
	ErrHoldNotPending       error = &sentinel{"hold_not_pending"}       // 409: hold already captured, voided or expired
	ErrAccountClosed        error = &sentinel{"account_closed"}         // 409: the account was closed
	ErrAccountNotEmpty      error = &sentinel{"account_not_empty"}      // 409: close of an account with money or holds
	ErrPayloadTooLarge      error = &sentinel{"payload_too_large"}      // 413
	ErrInsufficientFunds    error = &sentinel{"insufficient_funds"}     // 422: nothing written
	ErrAmountOverflow       error = &sentinel{"amount_overflow"}        // 422: a balance would pass int64
	ErrAmountExceedsHold    error = &sentinel{"amount_exceeds_hold"}    // 422: capture above the held amount
	ErrBatchNotAtomic       error = &sentinel{"batch_not_atomic"}       // 422: atomic batch across partitions
	ErrBatchAborted         error = &sentinel{"batch_aborted"}          // 424: only in batch results
	ErrRateLimited          error = &sentinel{"rate_limited"}           // 429: see Error.RetryAfter
	ErrInternal             error = &sentinel{"internal"}               // 500: a server bug; not retried
	ErrLockUnavailable      error = &sentinel{"lock_unavailable"}       // 503: retried
	ErrStoreUnavailable     error = &sentinel{"store_unavailable"}      // 503: retried
	ErrOverloaded           error = &sentinel{"overloaded"}             // 503: retried

	// Overdraft limits and threshold alerts.
	ErrAlertExists            error = &sentinel{"alert_exists"}              // 409: CreateAlert with an ID the account has
	ErrTooManyAlerts          error = &sentinel{"too_many_alerts"}           // 422: the account has 20 alerts
	ErrTooManyOverdraftLimits error = &sentinel{"too_many_overdraft_limits"} // 422: more than 16 currencies with a limit

	// ErrUnavailable matches every 503, whatever its code: the outcome of a write that ends
	// with it is unknown until it is retried with the same Idempotency-Key.
	ErrUnavailable error = &sentinel{"unavailable"}
)

// sentinels lists the sentinel of every problem code, for the test that compares them with
// the codes the server answers with.
var sentinels = []error{
	ErrInvalidRequest, ErrUnauthorized, ErrForbidden, ErrAccountNotFound, ErrNotFound,
	ErrMethodNotAllowed, ErrAccountExists, ErrVersionConflict, ErrIdempotencyKeyReused,
	ErrHoldNotPending, ErrAccountClosed, ErrAccountNotEmpty, ErrPayloadTooLarge,
	ErrInsufficientFunds, ErrAmountOverflow, ErrAmountExceedsHold, ErrBatchNotAtomic,
	ErrBatchAborted, ErrRateLimited, ErrInternal, ErrLockUnavailable, ErrStoreUnavailable,
	ErrOverloaded, ErrAlertExists, ErrTooManyAlerts, ErrTooManyOverdraftLimits,
}

// statusCodes is the code an answer without a problem body is taken to have.
var statusCodes = map[int]string{
	http.StatusUnauthorized:          "unauthorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "not_found",
	http.StatusMethodNotAllowed:      "method_not_allowed",
	http.StatusRequestEntityTooLarge: "payload_too_large",
	http.StatusTooManyRequests:       "rate_limited",
	http.StatusInternalServerError:   "internal",
}

// problem is the problem+json body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Code   string `json:"code"`
}

// newError builds the *Error of a non-2xx answer with body data.
func newError(resp *http.Response, data []byte) *Error {
	e := &Error{
		Status:     resp.StatusCode,
		RequestID:  resp.Header.Get("X-Request-ID"),
		RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
	var p problem
	if isJSON(resp.Header.Get("Content-Type")) && json.Unmarshal(data, &p) == nil {
		e.Code, e.Title, e.Detail, e.Type = p.Code, p.Title, p.Detail, p.Type
	}
	if e.Title == "" {
		e.Title = http.StatusText(resp.StatusCode)
	}
	return e
}

// isJSON reports whether a Content-Type is JSON (application/json, application/problem+json).
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// retryAfter parses a Retry-After value: whole seconds or an HTTP date (relative to now).
// It returns 0 for none or a value it cannot read.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
