package handlers

import (
	"context"
	"time"

	"github.com/gin-gonic/gin"
)

// DefaultRequestTimeout is the deadline of a request when Config.RequestTimeout is zero.
const DefaultRequestTimeout = 30 * time.Second

// requestTimeout gives the request's context a deadline of Config.RequestTimeout
// (DefaultRequestTimeout when zero). Every ledger call runs under that context, so a request
// that outlives it gets the ledger's context.DeadlineExceeded, which the error table answers
// with 503 and Retry-After; the client may retry with the same Idempotency-Key to learn the
// outcome.
func (s *server) requestTimeout(c *gin.Context) {
	d := s.cfg.RequestTimeout
	if d == 0 {
		d = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), d)
	defer cancel()
	c.Request = c.Request.WithContext(ctx)
	c.Next()
}
