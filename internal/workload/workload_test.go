package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// memLedger is an in-memory ledger for testing the checker itself (the ledger's and the
// API's tests run the workload on real Redis). With forgetRefusals it records only the
// successes under an Idempotency-Key, as Tally did before refusals became final; with
// alertsWhileBelow a "below" alert fires on every write that leaves the balance below its
// threshold, not only on the one that crossed it (Blnk's monitors, blnk#318).
type memLedger struct {
	forgetRefusals   bool
	alertsWhileBelow bool
	mu               sync.Mutex
	setup            Setup
	balance          map[string]int64
	events           map[string][]ledger.Event
	byKey            map[string]keyed // account + key
}

type keyed struct {
	amount int64
	r      Result
}

func newMemLedger(forgetRefusals bool) *memLedger {
	return &memLedger{forgetRefusals: forgetRefusals, balance: map[string]int64{}, events: map[string][]ledger.Event{}, byKey: map[string]keyed{}}
}

func (m *memLedger) OpenAccount(_ context.Context, _ string, s Setup) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setup = s
	return nil
}

// append adds an event of type typ with data to account's stream.
func (m *memLedger) append(account, typ string, data any) string {
	raw, _ := json.Marshal(data)
	v := int64(len(m.events[account]) + 1)
	id := fmt.Sprintf("%s:%d", account, v)
	balances := map[string]ledger.Balance{Currency: {Posted: m.balance[account], Available: m.balance[account]}}
	m.events[account] = append(m.events[account], ledger.Event{ID: id, Type: typ, Account: account, Version: v, Data: raw, Balances: balances})
	return id
}

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
	if op.Kind == Withdrawal && m.balance[op.Account]-op.Amount < -m.setup.OverdraftLimit {
		r = Result{Outcome: Rejected, Code: "insufficient_funds"}
		if m.forgetRefusals {
			return r
		}
	} else {
		typ, sign := ledger.EventDeposited, int64(1)
		if op.Kind == Withdrawal {
			typ, sign = ledger.EventWithdrawn, -1
		}
		before := m.balance[op.Account]
		m.balance[op.Account] += sign * op.Amount
		id := m.append(op.Account, typ, ledger.MoneyData{OperationID: fmt.Sprintf("op%d", op.Amount), Currency: Currency, Amount: op.Amount})
		for _, a := range m.setup.Alerts {
			if a.crossed(before, m.balance[op.Account]) || (m.alertsWhileBelow && a.Below && m.balance[op.Account] < a.Threshold) {
				m.append(op.Account, ledger.EventBalanceAlert, ledger.BalanceAlertData{AlertID: a.ID, EventID: id})
			}
		}
		r = Result{Outcome: Applied, Body: []byte(fmt.Sprintf(`{"operation_id":"op%d"}`, op.Amount))}
	}
	if op.Key != "" {
		m.byKey[k] = keyed{op.Amount, r}
	}
	return r
}

func (m *memLedger) Events(_ context.Context, account string) ([]ledger.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]ledger.Event(nil), m.events[account]...), nil
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

// TestOverdraftAndAlertsChecked: with an overdraft limit and alerts on every account, the
// checker passes a ledger that fires each alert once per crossing and fails one that fires a
// "below" alert on every write while the balance stays below.
func TestOverdraftAndAlertsChecked(t *testing.T) {
	ctx := context.Background()
	// "far" is above every balance the run reaches: it never crosses, and every write
	// leaves the balance below it (which the noisy ledger alerts on, whatever the order the
	// concurrent writes land in).
	cfg := Config{Seed: 3, Accounts: 2, Rounds: 4, Keyless: 20, Keys: 6, Burst: 4, OtherBody: 0.2, Overdraft: 500,
		Alerts: []Alert{{ID: "low", Below: true, Threshold: 0}, {ID: "high", Threshold: 200}, {ID: "far", Below: true, Threshold: 1 << 40}}}
	m := newMemLedger(false)
	rep, err := Run(ctx, m, cfg)
	require.NoError(t, err)
	require.Positive(t, rep.Applied)
	alerts := 0
	for _, evs := range m.events {
		for _, e := range evs {
			if e.Type == ledger.EventBalanceAlert {
				alerts++
			}
		}
	}
	require.Positive(t, alerts, "the balances crossed a threshold: the check had alerts to check")
	noisy := newMemLedger(false)
	noisy.alertsWhileBelow = true
	_, err = Run(ctx, noisy, cfg)
	require.ErrorContains(t, err, "is a BalanceAlert of alert far")
}
