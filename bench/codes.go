package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/tally-ledger/tally/handlers"
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

// sentinels are the ledger errors a library answer is told apart by, in the order the HTTP
// API's error table checks them; anything else is a 500 "internal", as the API answers it.
func sentinels() []error {
	return []error{
		ledger.ErrInvalid, ledger.ErrAccountNotFound, ledger.ErrAccountExists, ledger.ErrVersionConflict,
		ledger.ErrIdempotencyKeyReused, ledger.ErrInsufficientFunds, ledger.ErrOverflow, ledger.ErrLockUnavailable,
		ledger.ErrStoreUnavailable, ledger.ErrOverloaded, ledger.ErrAccountClosed, ledger.ErrAccountNotEmpty,
		ledger.ErrNotFound, ledger.ErrHoldNotPending, ledger.ErrAmountExceedsHold, ledger.ErrBatchNotAtomic,
		ledger.ErrBatchAborted, context.DeadlineExceeded,
	}
}

// Classifier names errors of the library and of a running server by the HTTP API's problem
// codes. The codes of library errors come from the API itself (package handlers owns the one
// error→HTTP table): NewClassifier asks it once for each ledger error.
type Classifier struct {
	errs  []error
	specs []Answer
}

// NewClassifier returns a Classifier whose table is the HTTP API's answer to each ledger
// sentinel error. It returns an error when the API cannot be built or answers one of them
// without a problem code.
func NewClassifier() (*Classifier, error) {
	p := &probeLedger{}
	h, err := handlers.New(p, handlers.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("bench: error table: %w", err)
	}
	c := &Classifier{}
	for _, e := range sentinels() {
		p.err = e
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/accounts/probe/deposits", strings.NewReader(`{"currency":"USD","amount":1}`))
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		var prob struct {
			Code string `json:"code"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &prob); err != nil || prob.Code == "" {
			return nil, fmt.Errorf("bench: error table: the API answers %v with %d %q", e, rec.Code, rec.Body.String())
		}
		c.errs = append(c.errs, e)
		c.specs = append(c.specs, answerFor(rec.Code, prob.Code))
	}
	return c, nil
}

// probeLedger answers every deposit with err; the API calls nothing else for one.
type probeLedger struct {
	handlers.Ledger
	err error
}

func (p *probeLedger) Deposit(context.Context, ledger.Deposit, ledger.WriteOptions) (ledger.Receipt, error) {
	return ledger.Receipt{}, p.err
}

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

// Classify returns what err means: nil is Applied; a ProblemError is classified by its code;
// a ledger error by the API's answer to it; a cancellation is Unknown "canceled"; a
// TransportError Unknown "transport"; anything else Unknown "internal", as the API answers
// an error it does not know.
func (c *Classifier) Classify(err error) Answer {
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
	for i, e := range c.errs {
		if errors.Is(err, e) {
			return c.specs[i]
		}
	}
	if errors.Is(err, context.Canceled) && !errors.Is(err, ledger.ErrInternal) {
		return Answer{Outcome: Unknown, Code: "canceled"}
	}
	return Answer{Outcome: Unknown, Code: "internal", Status: http.StatusInternalServerError}
}
