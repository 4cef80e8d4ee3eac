package handlers

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// closeAccount closes an account whose every posted and held amount is zero. The body may
// be left out or be {}.
func (s *server) closeAccount(c *gin.Context) {
	var body struct{}
	if !s.decodeOptional(c, &body) {
		return
	}
	s.write(c, http.StatusOK, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.CloseAccount(ctx, c.Param("id"), opts)
	})
}
