package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// TestRelayEndpoints: GET /v1/relay reports the partitions from Redis (before any relay ran:
// not consumed, everything backlog; afterwards the dead-lettered event), with the v1 field
// names lag and lag_seconds still present; the replay needs a key with the admin scope.
func TestRelayEndpoints(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	l, err := ledger.Open(ctx, rdb, ledger.Config{Partitions: 4})
	require.NoError(t, err)
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{Partitions: 4})
	require.NoError(t, err)
	adminKey, user := "admin-key-0123456789", "user-key-0123456789"
	keys := mustKeys(t, key("user", user, "", handlers.ScopeRead, handlers.ScopeWrite), key("admin", adminKey, "", handlers.ScopeAdmin))
	h, err := handlers.New(l, handlers.Config{Keys: keys, Relay: relayStatus{admin}})
	require.NoError(t, err)
	a := &api{t: t, h: h, rdb: rdb}
	auth := []string{"Authorization", "Bearer " + user}
	a.mustDo(201, "POST", "/v1/accounts", `{"id":"alice"}`, auth...)

	var raw struct {
		Partitions []map[string]any `json:"partitions"`
	}
	rec := a.mustDo(200, "GET", "/v1/relay", ``, auth...)
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	require.Len(t, raw.Partitions, 4)
	p := raw.Partitions[l.Partition("alice")]
	assert.Equal(t, false, p["consumed"], "no relay has run yet")
	assert.Equal(t, 1.0, p["backlog"], "the AccountOpened event waits")
	assert.Equal(t, 1.0, p["lag"], "lag is the v1 name of backlog")
	assert.Equal(t, 1.0, p["length"])
	assert.Equal(t, p["oldest_age_seconds"], p["lag_seconds"])
	assert.Equal(t, "", p["owner"])

	locker, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { locker.Close() })
	failing := outbox.NewHandlerSink(func(ctx context.Context, m outbox.Message) error {
		return outbox.Permanent(errors.New("sink rejects everything"))
	})
	relay, err := outbox.NewRelay(rdb, locker, outbox.Config{Partitions: 4, Sinks: []outbox.Sink{failing}, PollInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })

	var st struct {
		Partitions []handlers.PartitionStatus `json:"partitions"`
	}
	require.Eventually(t, func() bool {
		rec := a.mustDo(200, "GET", "/v1/relay", ``, auth...)
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &st))
		require.Len(t, st.Partitions, 4)
		p := st.Partitions[l.Partition("alice")]
		return p.DeadLetters == 1 && p.Backlog == 0 && p.Consumed && p.Owner == relay.Owner()
	}, 10*time.Second, 20*time.Millisecond, "the rejected event is dead-lettered and shows in the status")

	requireProblem(t, a.do("POST", "/v1/relay/dead-letters/replay", ``, auth...), 403, "forbidden")
	requireProblem(t, a.do("POST", "/v1/relay/dead-letters/replay", ``), 401, "unauthorized")
	rec = a.mustDo(200, "POST", "/v1/relay/dead-letters/replay", ``, "Authorization", "Bearer "+adminKey)
	assert.JSONEq(t, `{"replayed":1}`, rec.Body.String())
}

// relayStatus adapts *outbox.Admin to handlers.Relay, as cmd/tally does.
type relayStatus struct{ a *outbox.Admin }

func (s relayStatus) Status(ctx context.Context) ([]handlers.PartitionStatus, error) {
	st, err := s.a.Status(ctx)
	out := make([]handlers.PartitionStatus, len(st))
	for i, p := range st {
		out[i] = handlers.PartitionStatus(p)
	}
	return out, err
}

func (s relayStatus) ReplayDeadLetters(ctx context.Context) (int, error) {
	return s.a.ReplayDeadLetters(ctx)
}
