package handlers

import (
	"context"
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// Problem is an RFC 9457 problem+json body. Code is the stable machine-readable reason.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Code   string `json:"code"`
}

// problemSpec is one row of the error→HTTP table.
type problemSpec struct {
	status int
	code   string
	title  string
}

// errorTable maps ledger sentinel errors to HTTP. It is the only place that does.
var errorTable = []struct {
	err  error
	spec problemSpec
}{
	{ledger.ErrInvalid, specInvalid},
	{ledger.ErrAccountNotFound, problemSpec{http.StatusNotFound, "account_not_found", "Account not found"}},
	{ledger.ErrAccountExists, problemSpec{http.StatusConflict, "account_exists", "Account already exists"}},
	{ledger.ErrVersionConflict, problemSpec{http.StatusConflict, "version_conflict", "Version conflict"}},
	{ledger.ErrIdempotencyKeyReused, problemSpec{http.StatusConflict, "idempotency_key_reused", "Idempotency key reused"}},
	{ledger.ErrInsufficientFunds, problemSpec{http.StatusUnprocessableEntity, "insufficient_funds", "Insufficient funds"}},
	{ledger.ErrOverflow, problemSpec{http.StatusUnprocessableEntity, "amount_overflow", "Amount overflow"}},
	{ledger.ErrLockUnavailable, problemSpec{http.StatusServiceUnavailable, "lock_unavailable", "Lock unavailable"}},
	{ledger.ErrStoreUnavailable, problemSpec{http.StatusServiceUnavailable, "store_unavailable", "Store unavailable"}},
	{ledger.ErrOverloaded, problemSpec{http.StatusServiceUnavailable, "overloaded", "Overloaded"}},
	{ledger.ErrAccountClosed, problemSpec{http.StatusConflict, "account_closed", "Account closed"}},
	{ledger.ErrAccountNotEmpty, problemSpec{http.StatusConflict, "account_not_empty", "Account not empty"}},
	{ledger.ErrNotFound, specNotFound},
	{ledger.ErrHoldNotPending, problemSpec{http.StatusConflict, "hold_not_pending", "Hold not pending"}},
	{ledger.ErrAmountExceedsHold, problemSpec{http.StatusUnprocessableEntity, "amount_exceeds_hold", "Amount exceeds hold"}},
	{ledger.ErrAlertExists, problemSpec{http.StatusConflict, "alert_exists", "Alert exists"}},
	{ledger.ErrTooManyAlerts, problemSpec{http.StatusUnprocessableEntity, "too_many_alerts", "Too many alerts"}},
	{ledger.ErrTooManyOverdraftLimits, problemSpec{http.StatusUnprocessableEntity, "too_many_overdraft_limits", "Too many overdraft limits"}},
	{ledger.ErrBatchNotAtomic, problemSpec{http.StatusUnprocessableEntity, "batch_not_atomic", "Batch not atomic"}},
	{ledger.ErrBatchAborted, problemSpec{http.StatusFailedDependency, "batch_aborted", "Batch aborted"}},
	{context.DeadlineExceeded, problemSpec{http.StatusServiceUnavailable, "store_unavailable", "Store unavailable"}},
}

var (
	specInternal   = problemSpec{http.StatusInternalServerError, "internal", "Internal error"}
	specNotFound   = problemSpec{http.StatusNotFound, "not_found", "Not found"}
	specTooLarge   = problemSpec{http.StatusRequestEntityTooLarge, "payload_too_large", "Payload too large"}
	specInvalid    = problemSpec{http.StatusBadRequest, "invalid_request", "Invalid request"}
	specUnauthed   = problemSpec{http.StatusUnauthorized, "unauthorized", "Unauthorized"}
	specNotAllowed = problemSpec{http.StatusMethodNotAllowed, "method_not_allowed", "Method not allowed"}
)

// retryAfterSeconds is sent with every 503.
const retryAfterSeconds = "1"

// newProblem returns the problem+json body of spec with detail.
func newProblem(spec problemSpec, detail string) Problem {
	return Problem{
		Type:   "https://tally.dev/problems/" + spec.code,
		Title:  spec.title,
		Status: spec.status,
		Detail: detail,
		Code:   spec.code,
	}
}

// writeProblem writes a problem+json response and aborts the gin chain.
func writeProblem(c *gin.Context, spec problemSpec, detail string) {
	if spec.status == http.StatusServiceUnavailable {
		c.Header("Retry-After", retryAfterSeconds)
	}
	c.Header("Content-Type", "application/problem+json")
	c.AbortWithStatusJSON(spec.status, newProblem(spec, detail))
}

// writeError maps err through errorTable (see problemFor) and writes the problem; when the
// client went away it writes nothing.
func (s *server) writeError(c *gin.Context, err error) {
	spec, detail, ok := s.problemFor(c, err)
	if !ok {
		c.Abort() // the client went away; nobody reads a response
		return
	}
	if ledger.IsReplayed(err) { // the refusal recorded under the request's key, again
		c.Header("Idempotent-Replayed", "true")
	}
	writeProblem(c, spec, detail)
}

// lookup returns the problem of the first errorTable row whose error err wraps.
func lookup(err error) (problemSpec, bool) {
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			return row.spec, true
		}
	}
	return problemSpec{}, false
}

// problemFor maps err through errorTable to the problem that answers it and its detail.
// Errors it does not know are logged (once, here, at the edge) and answered with a 500 that
// reveals nothing. ok is false when the request's client went away (context.Canceled):
// nobody reads an answer.
func (s *server) problemFor(c *gin.Context, err error) (spec problemSpec, detail string, ok bool) {
	if spec, ok := lookup(err); ok {
		detail := err.Error()
		if spec.status >= 500 {
			s.log.Warn("request failed", "request_id", requestIDOf(c), "method", c.Request.Method, "path", c.FullPath(), "err", err)
			detail = spec.title + "; retry later"
		}
		return spec, detail, true
	}
	if errors.Is(err, context.Canceled) && !errors.Is(err, ledger.ErrInternal) {
		return problemSpec{}, "", false
	}
	// A bug (ledger.ErrInternal, a panic, anything unmapped): logged here with what it
	// carries, answered without internals.
	attrs := []any{"request_id", requestIDOf(c), "method", c.Request.Method, "path", c.FullPath(), "err", err}
	var pe *ledger.PanicError
	if errors.As(err, &pe) {
		attrs = append(attrs, "stack", string(pe.Stack))
	}
	s.log.Error("internal error", attrs...)
	return specInternal, "an internal error occurred; it has been logged", true
}
