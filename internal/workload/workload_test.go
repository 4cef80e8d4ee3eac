package workload

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// memLedger is an in-memory ledger for testing the checker itself (the ledger's and the
// API's tests run the workload on real Redis). With forgetRefusals it records only the
// successes under an Idempotency-Key, as Tally did before refusals became final.
type memLedger struct {
	forgetRefusals bool
	mu             sync.Mutex
	balance        map[string]int64
	events         map[string][]AppliedOp
	byKey          map[string]keyed // account + key
}

type keyed struct {
	amount int64
	r      Result
}

func newMemLedger(forgetRefusals bool) *memLedger {
	return &memLedger{forgetRefusals: forgetRefusals, balance: map[string]int64{}, events: map[string][]AppliedOp{}, byKey: map[string]keyed{}}
}

func (m *memLedger) OpenAccount(context.Context, string) error { return nil }

func (m *memLedger) Do(_ context.Context, op Op) Result {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := op.Account + "\x00" + op.Key
	if rec, ok := m.byKey[k]; ok && op.Key != "" {
		if rec.amount != op.Amount {
			return Result{Outcome: Rejected, Code: "idempotency_key_reused"}
		}
		return rec.r
	}
	var r Result
	if op.Kind == Withdrawal && m.balance[op.Account] < op.Amount {
		r = Result{Outcome: Rejected, Code: "insufficient_funds"}
		if m.forgetRefusals {
			return r
		}
	} else {
		id := fmt.Sprintf("op%d", op.Amount)
		sign := int64(1)
		if op.Kind == Withdrawal {
			sign = -1
		}
		m.balance[op.Account] += sign * op.Amount
		m.events[op.Account] = append(m.events[op.Account], AppliedOp{OperationID: id, Kind: op.Kind, Amount: op.Amount})
		r = Result{Outcome: Applied, Body: []byte(`{"operation_id":"` + id + `"}`)}
	}
	if op.Key != "" {
		m.byKey[k] = keyed{op.Amount, r}
	}
	return r
}

func (m *memLedger) Applied(_ context.Context, account string) ([]AppliedOp, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]AppliedOp(nil), m.events[account]...), nil
}

func (m *memLedger) Posted(_ context.Context, account string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.balance[account], nil
}

// TestLateRetryOfRefusalChecked: the checker passes a ledger whose refusals under a key
// are final and fails one that forgets them, also in a run without keyed requests, where
// no refusal of the run's own can show it (only the late retry of the checker's own).
func TestLateRetryOfRefusalChecked(t *testing.T) {
	ctx := context.Background()
	for _, keys := range []int{0, 8} {
		cfg := Config{Seed: 1, Accounts: 3, Rounds: 3, Keyless: 10, Keys: keys, Burst: 4, OtherBody: 0.2}
		_, err := Run(ctx, newMemLedger(false), cfg)
		require.NoError(t, err, "keys per round %d", keys)
		_, err = Run(ctx, newMemLedger(true), cfg)
		require.Error(t, err, "keys per round %d", keys)
		if keys == 0 {
			require.ErrorContains(t, err, `(key "late-refusal") was refused for insufficient funds; a late retry with the money there got`)
		}
	}
}
