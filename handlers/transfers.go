package handlers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// resourceID returns the ID of the transfer or hold a POST creates, which is also its
// idempotency key: the body's id; else the Idempotency-Key header when it is a valid ID;
// else "k-" and 32 hex digits of the header's SHA-256 (a retry with the same header names
// the same resource); else "", for the ledger to pick a random one. The header is checked
// like on every POST even when the body's id wins. It writes a 400 problem and returns
// false for a malformed header.
func resourceID(c *gin.Context, bodyID string) (string, bool) {
	key := c.GetHeader("Idempotency-Key")
	if key != "" {
		if err := ledger.ValidateIdempotencyKey(key); err != nil {
			writeProblem(c, specInvalid, err.Error())
			return "", false
		}
	}
	switch {
	case bodyID != "":
		return bodyID, true
	case key != "":
		return derivedID(key), true
	default:
		return "", true
	}
}

// derivedID returns key when it is a valid ID, else an ID derived from it.
func derivedID(key string) string {
	if ledger.ValidateID("id", key) == nil {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "k-" + hex.EncodeToString(sum[:16])
}

type transferBody struct {
	ID       string            `json:"id"`
	From     string            `json:"from"`
	To       string            `json:"to"`
	Currency string            `json:"currency"`
	Amount   Amount            `json:"amount"`
	Metadata map[string]string `json:"metadata"`
}

// transferStatus is the HTTP status that answers a transfer: 202 while it is pending (the
// saga finishes it; GET /v1/transfers/{id} shows when), 201 once it is final.
func transferStatus(t ledger.Transfer) int {
	if t.Status == ledger.TransferPending {
		return http.StatusAccepted
	}
	return http.StatusCreated
}

func (s *server) createTransfer(c *gin.Context) {
	var body transferBody
	if !s.decode(c, &body) || !requireAmount(c, body.Amount) {
		return
	}
	if body.From == "" || body.To == "" {
		writeProblem(c, specInvalid, "from and to are required")
		return
	}
	if id, bad := foreign(c, body.From, body.To); bad {
		s.writeError(c, errAccountNotFound(id)) // as for a missing account: nothing revealed
		return
	}
	// The ledger refuses from == to, malformed IDs, currencies and metadata (400).
	id, ok := resourceID(c, body.ID)
	if !ok {
		return
	}
	res, err := s.ledger.CreateTransfer(c.Request.Context(), ledger.TransferRequest{
		ID: id, From: body.From, To: body.To, Currency: body.Currency, Amount: body.Amount.Value, Metadata: body.Metadata,
	})
	if err != nil {
		s.writeError(c, err)
		return
	}
	if res.Replayed {
		c.Header("Idempotent-Replayed", "true")
	}
	c.Header("Location", "/v1/transfers/"+res.Transfer.ID)
	c.JSON(transferStatus(res.Transfer), res.Transfer)
}

func (s *server) getTransfer(c *gin.Context) {
	t, err := s.ledger.GetTransfer(c.Request.Context(), c.Param("id"))
	if err == nil {
		if _, bad := foreign(c, t.From, t.To); bad {
			// Another tenant's transfer is answered as a missing one.
			err = fmt.Errorf("%w: transfer %s", ledger.ErrNotFound, c.Param("id"))
		}
	}
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, t)
}
