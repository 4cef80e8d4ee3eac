package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// ackedOp is a write a client got a 2xx answer for.
type ackedOp struct {
	kind    string // "deposits", "withdrawals" or "transfer"
	account string // the account written (the source of a transfer)
	to      string
	amount  int64
	opID    string    // the event's operation_id (deposits, withdrawals) or the transfer ID
	sent    time.Time // the first attempt
	acked   time.Time // the 2xx answer
}

// everysecWindow bounds how long before a SIGKILL an acknowledged write may still be only in
// Redis's memory with appendfsync everysec: while a background fsync is slow, Redis postpones
// writing its AOF buffer for up to 2 s, counted in whole seconds of its clock, and keeps
// answering clients meanwhile (flushAppendOnlyFile in aof.c). Client-side times only widen the
// gap they measure, so the bound holds for them too.
const everysecWindow = 3 * time.Second

// TestDurabilityRedisKilledMidLoad: a real `tally serve` process over a data Redis with the
// append-only file; clients deposit, withdraw and transfer with idempotency keys; the data
// Redis is SIGKILLed while they do and restarted on the same port from the same AOF, and the
// clients retry until they get an answer. Every acknowledged operation is in the event
// streams exactly once, each account's balance is what the acknowledgements add up to, and
// Verify is clean.
//
// With appendfsync always every acknowledged write was fsynced before its reply, and nothing
// may be lost. With everysec a crash of the redis-server process usually loses nothing either,
// as the kernel still holds the written pages; but while a background fsync is slow (a busy
// disk) Redis keeps up to about 2 s of writes in its own buffer and answers clients anyway, and
// a SIGKILL loses those. So the everysec run allows a loss, and checks that it is what that
// mechanism can lose: only writes acknowledged within everysecWindow before the kill, a suffix
// of the history (every write that started after a lost one was acknowledged is lost too),
// none after the restart, and never anything applied twice. A crash of the machine (power,
// kernel) loses up to the last second with everysec; a test cannot produce that without a VM,
// so it is not faked here.
func TestDurabilityRedisKilledMidLoad(t *testing.T) {
	bin := buildTally(t)
	for _, fsync := range []string{"always", "everysec"} {
		t.Run("appendfsync "+fsync, func(t *testing.T) {
			data := redistest.MustStart(t, redistest.WithAOF(fsync))
			p := startProc(t, bin, "--redis", data.Addr())
			runDurability(t, p, data, fsync == "everysec")
		})
	}
}

// runDurability runs the load, kills and restarts data, and checks the outcome. mayLose allows
// acknowledged writes of the last everysecWindow before the kill to be missing (see above).
func runDurability(t *testing.T, p *proc, data *redistest.Server, mayLose bool) {
	ctx := context.Background()
	accounts := []string{"d0", "d1", "d2", "d3", "d4", "d5"}
	client := &http.Client{Timeout: 10 * time.Second}
	policy := backoff.Policy{Base: 5 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.5}
	var failed atomic.Int64 // attempts that got no definite answer (Redis down)
	// send repeats one request (same Idempotency-Key) until it gets a definite answer.
	send := func(path, key string, body any) (int, string) {
		deadline := time.Now().Add(60 * time.Second)
		for attempt := 1; time.Now().Before(deadline); attempt++ {
			status, out, err := sendErr(client, p.base, http.MethodPost, path, key, body)
			if err == nil && status < 500 {
				return status, out
			}
			failed.Add(1)
			time.Sleep(policy.Delay(attempt)) // the client's backoff between retries
		}
		t.Errorf("POST %s: no definite answer within 60s", path)
		return 0, ""
	}
	for _, a := range accounts {
		status, out := send("/v1/accounts", "open-"+a, map[string]any{"id": a})
		require.Equal(t, http.StatusCreated, status, out)
		status, out = send("/v1/accounts/"+a+"/deposits", "seed-"+a, map[string]any{"currency": "USD", "amount": 1_000_000})
		require.Equal(t, http.StatusCreated, status, out)
	}
	// The set-up is in the AOF file (the kernel's page cache at least) before the load starts,
	// so that only the load's writes can be in the window a kill may lose.
	setup := data.Client()
	require.Eventually(t, func() bool {
		info, err := setup.Info(ctx, "persistence").Result()
		return err == nil && strings.Contains(info, "aof_buffer_length:0\r\n")
	}, 10*time.Second, 5*time.Millisecond, "Redis wrote its AOF buffer")

	const clients, perClient = 8, 40
	var (
		mu    sync.Mutex
		acked []ackedOp
		wg    sync.WaitGroup
	)
	for c := range clients {
		wg.Go(func() {
			for i := range perClient {
				a := accounts[(c+i)%len(accounts)]
				b := accounts[(c+2*i+1)%len(accounts)]
				amount := int64(1 + (c*31+i*7)%500)
				key := fmt.Sprintf("c%d-op%d", c, i)
				var op ackedOp
				var status int
				var out string
				sent := time.Now()
				switch i % 3 {
				case 0, 1:
					kind := "deposits"
					if i%3 == 1 {
						kind = "withdrawals"
					}
					status, out = send("/v1/accounts/"+a+"/"+kind, key, map[string]any{"currency": "USD", "amount": amount})
					var res struct {
						OperationID string `json:"operation_id"`
					}
					_ = json.Unmarshal([]byte(out), &res)
					op = ackedOp{kind: kind, account: a, amount: amount, opID: res.OperationID}
				default:
					if a == b {
						continue
					}
					status, out = send("/v1/transfers", "", map[string]any{"id": key, "from": a, "to": b, "currency": "USD", "amount": amount})
					op = ackedOp{kind: "transfer", account: a, to: b, amount: amount, opID: key}
				}
				if status/100 == 2 {
					op.sent, op.acked = sent, time.Now()
					mu.Lock()
					acked = append(acked, op)
					mu.Unlock()
				} else {
					assert.Equal(t, http.StatusUnprocessableEntity, status, "the only refusal expected is insufficient funds: %s", out)
				}
			}
		})
	}
	ackedSoFar := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	require.Eventually(t, func() bool { return ackedSoFar() >= clients*perClient/4 }, 60*time.Second, 5*time.Millisecond, "load is flowing")
	before := ackedSoFar()
	killedAt := time.Now()
	data.Kill()
	require.Eventually(t, func() bool { return failed.Load() >= clients }, 30*time.Second, 5*time.Millisecond, "clients notice Redis is gone")
	data.Restart()
	wg.Wait()
	t.Logf("%d operations acknowledged (%d before the SIGKILL), %d attempts without an answer", len(acked), before, failed.Load())
	require.Greater(t, len(acked), before, "operations were acknowledged after the restart too")

	rdb := data.Client()
	l, err := ledger.Open(ctx, rdb, ledger.Config{})
	require.NoError(t, err)
	var rep ledger.VerifyReport
	require.Eventually(t, func() bool {
		rep, err = l.Verify(ctx)
		return err == nil && rep.Pending == 0
	}, 30*time.Second, 20*time.Millisecond, "every transfer finishes")
	require.True(t, rep.OK(), "%v", rep.Problems)

	// Every acknowledged operation is in the streams exactly once.
	seen := map[string]int{} // operation_id or transfer ID → events that carry it
	for _, a := range accounts {
		for _, e := range readEvents(t, l, a) {
			var d struct {
				OperationID string `json:"operation_id"`
				TransferID  string `json:"transfer_id"`
			}
			require.NoError(t, json.Unmarshal(e.Data, &d))
			switch e.Type {
			case ledger.EventDeposited, ledger.EventWithdrawn:
				seen[d.OperationID]++
			case ledger.EventTransferDebited:
				seen[d.TransferID]++
			}
		}
	}
	want := map[string]int64{}
	for _, a := range accounts {
		want[a] = 1_000_000
	}
	var lost []ackedOp
	for _, op := range acked {
		require.NotEmpty(t, op.opID, "%+v", op)
		if seen[op.opID] == 0 && mayLose {
			lost = append(lost, op)
			continue
		}
		assert.Equal(t, 1, seen[op.opID], "acknowledged %s %s is in the streams exactly once", op.kind, op.opID)
		switch op.kind {
		case "deposits":
			want[op.account] += op.amount
		case "withdrawals":
			want[op.account] -= op.amount
		default:
			want[op.account] -= op.amount
			want[op.to] += op.amount
		}
	}
	for _, a := range accounts {
		acc, err := l.Account(ctx, a)
		require.NoError(t, err)
		assert.Equal(t, want[a], acc.Balances["USD"].Posted, "account %s: the balance is what the acknowledgements add up to", a)
	}
	checkLossWindow(t, acked, lost, seen, killedAt)
	fsync, err := rdb.ConfigGet(ctx, "appendfsync").Result()
	require.NoError(t, err)
	t.Logf("appendfsync %s after the restart; %d events checked", fsync["appendfsync"], len(seen))
}

// lossProblems says how the acknowledged writes missing after the restart (lost) differ from
// what appendfsync everysec can lose to a process crash: each must have been acknowledged
// before the kill and at most everysecWindow before it, and they must be a suffix of the
// history (Redis appends a script's effects to the AOF in commit order): a write sent after a
// lost one was acknowledged committed after it, so it is lost too, unless it was acknowledged
// after the restart.
func lossProblems(acked, lost []ackedOp, seen map[string]int, killedAt time.Time) []string {
	var problems []string
	for _, l := range lost {
		if !l.acked.Before(killedAt) {
			problems = append(problems, fmt.Sprintf("%s %s acknowledged after the restart is missing", l.kind, l.opID))
		} else if ago := killedAt.Sub(l.acked); ago > everysecWindow {
			problems = append(problems, fmt.Sprintf("%s %s acknowledged %v before the kill is missing", l.kind, l.opID, ago))
		}
		for _, op := range acked {
			if op.sent.After(l.acked) && op.acked.Before(killedAt) && seen[op.opID] > 0 {
				problems = append(problems, fmt.Sprintf("%s %s, sent after lost %s %s was acknowledged, survived: the loss is not a suffix",
					op.kind, op.opID, l.kind, l.opID))
			}
		}
	}
	return problems
}

// checkLossWindow fails t when lossProblems finds any, and logs a loss it allows.
func checkLossWindow(t *testing.T, acked, lost []ackedOp, seen map[string]int, killedAt time.Time) {
	t.Helper()
	problems := lossProblems(acked, lost, seen, killedAt)
	assert.Empty(t, problems, "acknowledged writes lost beyond what appendfsync everysec allows")
	if len(lost) > 0 && len(problems) == 0 {
		var oldest time.Duration
		for _, l := range lost {
			oldest = max(oldest, killedAt.Sub(l.acked))
		}
		t.Logf("%d acknowledged writes lost to the SIGKILL, all acknowledged at most %v before it (Redis postponed its AOF write while a slow fsync ran)",
			len(lost), oldest)
	}
}

// TestLossProblems: the everysec check accepts a recent suffix and rejects an old loss, a loss
// after the restart and a loss with a later write surviving.
func TestLossProblems(t *testing.T) {
	kill := time.Unix(1_000, 0)
	at := func(ago time.Duration) time.Time { return kill.Add(-ago) }
	op := func(id string, sentAgo, ackedAgo time.Duration) ackedOp {
		return ackedOp{kind: "deposits", opID: id, sent: at(sentAgo), acked: at(ackedAgo)}
	}
	early := op("early", 10*time.Second, 9*time.Second)
	a := op("a", 1200*time.Millisecond, time.Second)
	b := op("b", 900*time.Millisecond, 800*time.Millisecond)  // sent after a was acknowledged
	c := op("c", 1100*time.Millisecond, 700*time.Millisecond) // concurrent with a
	after := op("after", -time.Second, -2*time.Second)        // acknowledged after the restart
	acked := []ackedOp{early, a, b, c, after}
	seenWithout := func(missing ...ackedOp) map[string]int {
		seen := map[string]int{}
		for _, o := range acked {
			seen[o.opID] = 1
		}
		for _, o := range missing {
			seen[o.opID] = 0
		}
		return seen
	}
	cases := []struct {
		name    string
		lost    []ackedOp
		problem string
	}{
		{"nothing lost", nil, ""},
		{"a recent suffix", []ackedOp{a, b}, ""},
		{"a concurrent write may survive", []ackedOp{b}, ""},
		{"the later write survived", []ackedOp{a}, "not a suffix"},
		{"too old", []ackedOp{early, a, b, c}, "9s before the kill"},
		{"after the restart", []ackedOp{after}, "after the restart"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			problems := lossProblems(acked, tc.lost, seenWithout(tc.lost...), kill)
			if tc.problem == "" {
				assert.Empty(t, problems)
				return
			}
			require.NotEmpty(t, problems)
			assert.Contains(t, strings.Join(problems, "; "), tc.problem)
		})
	}
}
