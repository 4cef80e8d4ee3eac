package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
	opID    string // the event's operation_id (deposits, withdrawals) or the transfer ID
}

// TestDurabilityRedisKilledMidLoad: a real `tally serve` process over a data Redis with the
// append-only file; clients deposit, withdraw and transfer with idempotency keys; the data
// Redis is SIGKILLed while they do and restarted on the same port from the same AOF, and the
// clients retry until they get an answer. Every acknowledged operation is in the event
// streams exactly once, each account's balance is what the acknowledgements add up to, and
// Verify is clean.
//
// With appendfsync always every acknowledged write was fsynced. The everysec run shows that
// a crash of the redis-server process alone loses nothing either: the kernel still holds
// the written pages. Only a crash of the machine (power, kernel) loses up to the last second
// with everysec — a test cannot produce that without a VM, so it is not faked here.
func TestDurabilityRedisKilledMidLoad(t *testing.T) {
	bin := buildTally(t)
	for _, fsync := range []string{"always", "everysec"} {
		t.Run("appendfsync "+fsync, func(t *testing.T) {
			data := redistest.MustStart(t, redistest.WithAOF(fsync))
			p := startProc(t, bin, "--redis", data.Addr())
			runDurability(t, p, data)
		})
	}
}

func runDurability(t *testing.T, p *proc, data *redistest.Server) {
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
	data.Kill()
	require.Eventually(t, func() bool { return failed.Load() >= clients }, 30*time.Second, 5*time.Millisecond, "clients notice Redis is gone")
	data.Restart()
	wg.Wait()
	t.Logf("%d operations acknowledged (%d before the SIGKILL), %d attempts without an answer", len(acked), before, failed.Load())
	require.Greater(t, len(acked), before, "operations were acknowledged after the restart too")

	rdb := redis.NewClient(&redis.Options{Addr: data.Addr()})
	defer rdb.Close()
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
	for _, op := range acked {
		require.NotEmpty(t, op.opID, "%+v", op)
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
	fsync, err := rdb.ConfigGet(ctx, "appendfsync").Result()
	require.NoError(t, err)
	t.Logf("appendfsync %s after the restart; %d events checked", fsync["appendfsync"], len(seen))
}
