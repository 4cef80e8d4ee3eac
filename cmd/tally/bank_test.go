package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// bankConfig sizes the crash test: the acceptance run is 100 accounts, 20,000
// operations and 32 clients.
type bankConfig struct {
	accounts, ops, clients int
	funding                int64
}

// TestTransfersConserveMoneyUnderCrashes is the bank test of DESIGN §10: two `tally serve`
// processes and one `tally relay` on one Redis (standalone, then a 3-master Cluster); 32
// clients send random transfers, deposits and withdrawals through both serves while a
// nemesis SIGKILLs a serve or the relay at random moments and restarts it. Clients retry
// with the same transfer ID or Idempotency-Key until they get a definite answer. At
// quiescence: money is conserved, no balance is negative, every stream replays to its
// snapshot, every transfer answered 201/202 is completed or refunded exactly once, and every
// acknowledged deposit and withdrawal is applied exactly once.
func TestTransfersConserveMoneyUnderCrashes(t *testing.T) {
	bin := buildTally(t)
	cfg := bankConfig{accounts: 100, ops: 20_000, clients: 32, funding: 10_000}
	for _, backend := range []string{"standalone", "cluster"} {
		t.Run(backend, func(t *testing.T) {
			var args []string
			var rdb redis.UniversalClient
			if backend == "standalone" {
				srv := redistest.MustStart(t)
				args, rdb = []string{"--redis", srv.Addr()}, srv.Client()
			} else {
				c := redistest.MustStartCluster(t)
				args, rdb = []string{"--redis-cluster", strings.Join(c.Addrs(), ",")}, c.Client()
			}
			runBank(t, bin, args, rdb, cfg)
		})
	}
}

// cluster of tally processes the nemesis kills and restarts.
type bankProcs struct {
	mu     sync.Mutex
	serves [2]*proc
	relay  *proc
	kills  atomic.Int64
}

func (b *bankProcs) base(i int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.serves[i%2].base
}

func runBank(t *testing.T, bin string, redisArgs []string, rdb redis.UniversalClient, cfg bankConfig) {
	serveArgs := append([]string{"--relay=false", "--sweep-stuck-after", "2s"}, redisArgs...)
	relayArgs := append([]string{"--relay-lease-ttl", "2s"}, redisArgs...)
	procs := &bankProcs{}
	for i := range procs.serves {
		procs.serves[i] = startProc(t, bin, serveArgs...)
	}
	procs.relay, _ = startRelayProc(t, bin, relayArgs...)

	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	accounts := make([]string, cfg.accounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct%03d", i)
		status, body := post(t, procs.base(i)+"/v1/accounts", fmt.Sprintf(`{"id":%q}`, accounts[i]))
		require.Equal(t, http.StatusCreated, status, body)
		status, body = post(t, procs.base(i)+"/v1/accounts/"+accounts[i]+"/deposits", fmt.Sprintf(`{"currency":"USD","amount":%d}`, cfg.funding))
		require.Equal(t, http.StatusCreated, status, body)
	}

	// The nemesis: SIGKILL a serve or the relay every 300–900ms, restart it at once.
	stop := make(chan struct{})
	nemesisDone := make(chan struct{})
	go func() {
		defer close(nemesisDone)
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(300+rng.IntN(600)) * time.Millisecond):
			}
			// Clients keep using a killed serve's address until its replacement is up:
			// they get connection errors and move to the other serve.
			victim := rng.IntN(3)
			procs.mu.Lock()
			dead := procs.relay
			if victim < 2 {
				dead = procs.serves[victim]
			}
			procs.mu.Unlock()
			dead.kill()
			procs.kills.Add(1)
			// Not startProc: a goroutine must not end the test with FailNow.
			var p *proc
			var err error
			if victim < 2 {
				p, err = startServeProc(t, bin, serveArgs...)
			} else {
				p, _, err = startRelayProcErr(t, bin, relayArgs...)
			}
			if err != nil {
				t.Errorf("nemesis: restart: %v", err)
				return
			}
			procs.mu.Lock()
			if victim < 2 {
				procs.serves[victim] = p
			} else {
				procs.relay = p
			}
			procs.mu.Unlock()
		}
	}()

	type outcome struct {
		kind   string // deposit, withdrawal, transfer
		id     string
		amount int64
		status int
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		next     atomic.Int64
	)
	var wg sync.WaitGroup
	for c := 0; c < cfg.clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 99))
			for {
				n := next.Add(1)
				if n > int64(cfg.ops) {
					return
				}
				id := fmt.Sprintf("op%06d", n)
				amount := int64(rng.IntN(500) + 1)
				a, b := accounts[rng.IntN(len(accounts))], accounts[rng.IntN(len(accounts))]
				var o outcome
				switch r := rng.IntN(10); {
				case r < 6 && a != b:
					// A client whose transfer request died with its serve gives up half the
					// time, as a crashed client would: what it left half done is the process
					// manager's and the sweep's to finish.
					o = outcome{kind: "transfer", id: id, amount: amount}
					o.status = retryOr(t, client, procs, c, "POST", "/v1/transfers", "", map[string]any{"id": id, "from": a, "to": b, "currency": "USD", "amount": amount},
						rng.IntN(2) == 0)
				case r < 8:
					o = outcome{kind: "deposit", id: id, amount: amount}
					o.status = retry(t, client, procs, c, "POST", "/v1/accounts/"+a+"/deposits", id, map[string]any{"currency": "USD", "amount": amount})
				default:
					o = outcome{kind: "withdrawal", id: id, amount: amount}
					o.status = retry(t, client, procs, c, "POST", "/v1/accounts/"+a+"/withdrawals", id, map[string]any{"currency": "USD", "amount": amount})
				}
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-nemesisDone
	t.Logf("%d operations, %d processes killed", len(outcomes), procs.kills.Load())
	require.Positive(t, procs.kills.Load(), "the nemesis struck")

	// Quiescence: the relay's process manager and the serves' sweep finish every transfer.
	l, err := ledger.Open(context.Background(), rdb, ledger.Config{})
	require.NoError(t, err)
	var rep ledger.VerifyReport
	ok := assert.Eventually(t, func() bool {
		rep, err = l.Verify(context.Background())
		require.NoError(t, err)
		return rep.OK() && rep.Pending == 0
	}, 90*time.Second, 250*time.Millisecond)
	require.True(t, ok, "invariants at quiescence: %v, %d transfers still pending", rep.Problems, rep.Pending)

	var deposits, withdrawals int64
	transfers := map[string]int{}
	var abandoned []string
	for _, o := range outcomes {
		switch {
		case o.status >= 500:
			t.Fatalf("%s %s: got %d after retries", o.kind, o.id, o.status)
		case o.kind == "deposit" && o.status == http.StatusCreated:
			deposits += o.amount
		case o.kind == "withdrawal" && o.status == http.StatusCreated:
			withdrawals += o.amount
		case o.kind == "transfer" && (o.status == http.StatusCreated || o.status == http.StatusAccepted):
			transfers[o.id]++
		case o.kind == "transfer" && o.status == 0:
			abandoned = append(abandoned, o.id)
		case o.status == http.StatusUnprocessableEntity || o.status == http.StatusConflict:
		default:
			t.Fatalf("%s %s: unexpected status %d", o.kind, o.id, o.status)
		}
	}
	require.Positive(t, len(transfers))
	var total int64
	for _, a := range accounts {
		acc, err := l.Account(context.Background(), a)
		require.NoError(t, err)
		total += acc.Balances["USD"].Posted
		assert.GreaterOrEqual(t, acc.Balances["USD"].Available, int64(0), a)
	}
	want := int64(cfg.accounts)*cfg.funding + deposits - withdrawals
	assert.Equal(t, want, total, "acknowledged deposits and withdrawals applied exactly once, transfers conserve money")
	for id := range transfers {
		tr, err := l.GetTransfer(context.Background(), id)
		require.NoError(t, err, id)
		assert.Contains(t, []string{ledger.TransferCompleted, ledger.TransferRefunded}, tr.Status, id)
	}
	// Abandoned transfers that got as far as their debit were finished without their client.
	finished := 0
	for _, id := range abandoned {
		tr, err := l.GetTransfer(context.Background(), id)
		if errors.Is(err, ledger.ErrNotFound) {
			continue // died before its debit: nothing happened
		}
		require.NoError(t, err, id)
		assert.Contains(t, []string{ledger.TransferCompleted, ledger.TransferRefunded}, tr.Status, id)
		finished++
	}
	t.Logf("%d transfers acknowledged, %d abandoned by their client, %d of those finished without it", len(transfers), len(abandoned), finished)
	assert.Equal(t, len(transfers)+finished, rep.Transfers, "every transfer in the streams is accounted for")
}

// retry sends a write until it gets a definite answer (2xx or 4xx), moving to the other
// serve when one is down. The same ID or key makes every attempt the same request.
func retry(t *testing.T, client *http.Client, procs *bankProcs, c int, method, path, key string, body any) int {
	return retryOr(t, client, procs, c, method, path, key, body, false)
}

// retryOr is retry for a client that, when giveUp is set, abandons the request after its
// first failed attempt (status 0: outcome unknown to the client).
func retryOr(t *testing.T, client *http.Client, procs *bankProcs, c int, method, path, key string, body any, giveUp bool) int {
	deadline := time.Now().Add(60 * time.Second)
	for attempt := c; time.Now().Before(deadline); attempt++ {
		status, _, err := sendErr(client, procs.base(attempt), method, path, key, body)
		if err == nil && status < 500 {
			return status
		}
		if giveUp {
			return 0
		}
		// A client's backoff before retrying a peer that was down (not a wait for a condition).
		time.Sleep(time.Duration(5+attempt%20) * time.Millisecond)
	}
	t.Errorf("%s %s: no definite answer within 60s", method, path)
	return 599
}

func sendErr(client *http.Client, base, method, path, key string, body any) (int, string, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, "", err
	}
	req, err := http.NewRequest(method, base+path, bytes.NewReader(raw))
	if err != nil {
		return 0, "", err
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out), err
}
