package handlers

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// maxTimeoutSeconds bounds timeout_seconds of a hold (ledger.MaxHoldTimeout).
const maxTimeoutSeconds = int64(ledger.MaxHoldTimeout / time.Second)

// DefaultHoldsLimit is the page size of GET /v1/accounts/{id}/holds without ?limit.
const DefaultHoldsLimit = 100

type placeHoldBody struct {
	ID             string `json:"id"`
	Currency       string `json:"currency"`
	Amount         Amount `json:"amount"`
	TimeoutSeconds *int64 `json:"timeout_seconds"`
}

// holdTimeout returns timeout_seconds as a duration, or the problem detail when it is
// missing or out of range. The range is checked before the conversion, which would
// overflow for huge values.
func holdTimeout(field string, secs *int64) (time.Duration, string) {
	if secs == nil {
		return 0, field + " is required"
	}
	if *secs < 1 || *secs > maxTimeoutSeconds {
		return 0, fmt.Sprintf("%s must be 1..%d", field, maxTimeoutSeconds)
	}
	return time.Duration(*secs) * time.Second, ""
}

func (s *server) placeHold(c *gin.Context) {
	var body placeHoldBody
	if !s.decode(c, &body) || !requireAmount(c, body.Amount) {
		return
	}
	timeout, bad := holdTimeout("timeout_seconds", body.TimeoutSeconds)
	if bad != "" {
		writeProblem(c, specInvalid, bad)
		return
	}
	id, ok := resourceID(c, body.ID)
	if !ok {
		return
	}
	account := c.Param("id")
	rc, err := s.ledger.PlaceHold(c.Request.Context(), ledger.PlaceHold{
		Account: account, ID: id, Currency: body.Currency, Amount: body.Amount.Value, Timeout: timeout,
	})
	if err != nil {
		s.writeError(c, err)
		return
	}
	if rc.Replayed {
		c.Header("Idempotent-Replayed", "true")
	}
	if id == "" { // the ledger picked it
		var h struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(rc.Body, &h)
		id = h.ID
	}
	c.Header("Location", "/v1/accounts/"+account+"/holds/"+id)
	c.Data(http.StatusCreated, "application/json", rc.Body)
}

func (s *server) getHold(c *gin.Context) {
	h, err := s.ledger.Hold(c.Request.Context(), c.Param("id"), c.Param("hold"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, h)
}

// holdsPage is the answer of GET /v1/accounts/{id}/holds.
type holdsPage struct {
	Holds []ledger.Hold `json:"holds"`
	Next  string        `json:"next,omitempty"`
}

// listHolds pages through an account's pending holds (?after=<hold id>&limit=).
func (s *server) listHolds(c *gin.Context) {
	limit, err := queryLimit(c, DefaultHoldsLimit, ledger.MaxHoldsPage)
	if err != nil {
		writeProblem(c, specInvalid, err.Error())
		return
	}
	holds, next, err := s.ledger.PendingHolds(c.Request.Context(), c.Param("id"), c.Query("after"), limit)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, holdsPage{Holds: holds, Next: next})
}

type captureBody struct {
	Amount Amount `json:"amount"`
	To     string `json:"to"`
}

func (s *server) captureHold(c *gin.Context) {
	var body captureBody
	if !s.decodeOptional(c, &body) {
		return
	}
	if body.Amount.Set && body.Amount.Value <= 0 {
		writeProblem(c, specInvalid, "amount must be a positive integer in minor units; leave it out to capture the whole hold")
		return
	}
	if to, bad := foreign(c, body.To); bad {
		s.writeError(c, errAccountNotFound(to)) // as for a missing account: nothing revealed
		return
	}
	account, hold := c.Param("id"), c.Param("hold")
	s.write(c, http.StatusOK, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.CaptureHold(ctx, account, hold, body.Amount.Value, body.To, opts)
	})
}

func (s *server) voidHold(c *gin.Context) {
	var body struct{}
	if !s.decodeOptional(c, &body) {
		return
	}
	account, hold := c.Param("id"), c.Param("hold")
	s.write(c, http.StatusOK, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.VoidHold(ctx, account, hold, opts)
	})
}

// decodeOptional is decode for routes whose body may be left out: an empty body reads as
// {} and leaves v as it is; anything else must be one JSON object that fits v.
func (s *server) decodeOptional(c *gin.Context, v any) bool {
	br := bufio.NewReader(c.Request.Body)
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		return true
	}
	c.Request.Body = readCloser{br, c.Request.Body}
	return s.decode(c, v)
}

// readCloser reads from a buffered reader and closes the body under it.
type readCloser struct {
	io.Reader
	io.Closer
}
