package handlers

import (
	"context"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
)

// PartitionStatus is the delivery state of one outbox partition as GET /v1/relay shows it.
type PartitionStatus struct {
	Partition   int     `json:"partition"`
	Owner       string  `json:"owner"`
	Lag         int64   `json:"lag"`
	LagSeconds  float64 `json:"lag_seconds"`
	Pending     int64   `json:"pending"`
	DeadLetters int64   `json:"dead_letters"`
}

// Relay is what the handlers need of the outbox relay.
type Relay interface {
	// Status returns every partition's delivery state.
	Status(ctx context.Context) ([]PartitionStatus, error)
	// ReplayDeadLetters moves every dead letter back to its outbox and returns how many.
	ReplayDeadLetters(ctx context.Context) (int, error)
}

var specForbidden = problemSpec{http.StatusForbidden, "forbidden", "Forbidden"}

func (s *server) relayStatus(c *gin.Context) {
	st, err := s.cfg.Relay.Status(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"partitions": st})
}

func (s *server) replayDeadLetters(c *gin.Context) {
	n, err := s.cfg.Relay.ReplayDeadLetters(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"replayed": n})
}

// admin lets a request through when no API keys are configured (loopback development) or
// when its bearer token is one of the admin keys; a valid non-admin key gets 403.
func (s *server) admin(c *gin.Context) {
	if len(s.cfg.APIKeys) == 0 && len(s.cfg.AdminKeys) == 0 {
		c.Next()
		return
	}
	token, _ := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
	if matchKey(token, s.cfg.AdminKeys) {
		c.Next()
		return
	}
	writeProblem(c, specForbidden, "this operation needs an admin key")
}
