package handlers

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"
)

// PartitionStatus is the delivery state of one outbox partition as GET /v1/relay shows it.
// It is read from Redis, so every serve answers it, with or without a relay of its own.
type PartitionStatus struct {
	Partition int `json:"partition"`
	// Owner is the relay that holds the partition's lease, "" when none does.
	Owner string `json:"owner"`
	// Consumed is false when no relay of the group has ever served the partition: every
	// entry is then backlog.
	Consumed bool `json:"consumed"`
	// Length is the number of entries in the outbox stream (acknowledged ones awaiting
	// trimming included).
	Length int64 `json:"length"`
	// Backlog is the number of entries not yet acknowledged: never read plus Pending.
	Backlog int64 `json:"backlog"`
	// OldestAgeSeconds is the age of the oldest entry not yet acknowledged.
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// Pending is the number of entries read by the owner but not yet acknowledged.
	Pending int64 `json:"pending"`
	// DeadLetters is the length of the partition's dead-letter stream.
	DeadLetters int64 `json:"dead_letters"`
}

// partitionStatusJSON is a PartitionStatus as the API writes it: with the fields lag and
// lag_seconds, the earlier names of backlog and oldest_age_seconds, kept for v1 clients.
type partitionStatusJSON struct {
	PartitionStatus
	Lag        int64   `json:"lag"`
	LagSeconds float64 `json:"lag_seconds"`
}

// Relay is what the handlers need of the outbox: status and dead-letter replay, from Redis.
type Relay interface {
	// Status returns every partition's delivery state.
	Status(ctx context.Context) ([]PartitionStatus, error)
	// ReplayDeadLetters moves every dead letter back to its outbox and returns how many.
	ReplayDeadLetters(ctx context.Context) (int, error)
}

func (s *server) relayStatus(c *gin.Context) {
	st, err := s.cfg.Relay.Status(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	out := make([]partitionStatusJSON, len(st))
	for i, p := range st {
		out[i] = partitionStatusJSON{PartitionStatus: p, Lag: p.Backlog, LagSeconds: p.OldestAgeSeconds}
	}
	c.JSON(http.StatusOK, gin.H{"partitions": out})
}

func (s *server) replayDeadLetters(c *gin.Context) {
	n, err := s.cfg.Relay.ReplayDeadLetters(c.Request.Context())
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"replayed": n})
}
