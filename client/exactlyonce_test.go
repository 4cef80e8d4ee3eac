package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// TestExactlyOnceUnderFaults: goroutines deposit, withdraw and transfer (within and across
// partitions) through the client while a proxy answers 503 or 429, cuts connections before
// forwarding, and — the case idempotency keys exist for — forwards a write so that the
// server applies it, then cuts the connection or answers 503 instead of the server's
// answer. Every call must end in success or a definite refusal (insufficient funds), and
// every balance must equal the sum of the calls that succeeded: each applied exactly once.
func TestExactlyOnceUnderFaults(t *testing.T) {
	const (
		workers     = 8
		opsEach     = 30
		accounts    = 8
		seed        = 2_000
		maxFaults   = 3 // per request (key): the client's 8 attempts always get through
		faultChance = 0.5
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startServer(t, handlers.Config{}, nil)
	direct, _ := newClient(t, s.URL)
	ids := make([]string, accounts)
	for i := range ids {
		ids[i] = fmt.Sprintf("acct%d", i)
	}
	mustOpen(t, direct, seed, ids...)

	var rngMu sync.Mutex
	randSeed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", randSeed)
	rng := rand.New(rand.NewPCG(randSeed, 0))
	p := startProxy(t, s.URL, func(r *http.Request, n int) fault {
		rngMu.Lock()
		defer rngMu.Unlock()
		if n >= maxFaults || rng.Float64() >= faultChance {
			return pass
		}
		return fault(1 + rng.IntN(int(numFaults)-1))
	})
	c, _ := newClient(t, p.URL, WithRetry(RetryPolicy{MaxAttempts: maxFaults + 5, BaseDelay: time.Millisecond}))

	var (
		mu       sync.Mutex
		want     = map[string]int64{}
		events   = map[string]int{} // events each account must have beyond AccountOpened and the seed
		refused  atomic.Int64
		amountID atomic.Int64
	)
	for _, id := range ids {
		want[id] = seed
	}
	book := func(deltas map[string]int64) {
		mu.Lock()
		defer mu.Unlock()
		for id, d := range deltas {
			want[id] += d
			events[id]++
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, workers*opsEach)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(randSeed, uint64(w)+1))
			for range opsEach {
				a, b := ids[r.IntN(accounts)], ids[r.IntN(accounts)]
				amount := 1 + amountID.Add(1) // unique, to trace an event to its call
				var err error
				switch kind := r.IntN(3); {
				case kind == 0:
					if _, err = c.Deposit(ctx, a, "USD", amount); err == nil {
						book(map[string]int64{a: amount})
					}
				case kind == 1:
					amount *= 10 // some of them are refused
					if _, err = c.Withdraw(ctx, a, "USD", amount); err == nil {
						book(map[string]int64{a: -amount})
					}
				case a != b:
					var tr *Transfer
					if tr, err = c.CreateTransfer(ctx, TransferRequest{From: a, To: b, Currency: "USD", Amount: amount}); err == nil {
						if tr.Status == TransferPending {
							tr, err = c.WaitTransfer(ctx, tr.ID)
						}
						if err == nil && tr.Status == TransferCompleted {
							book(map[string]int64{a: -amount, b: amount})
						}
					}
				}
				if errors.Is(err, ErrInsufficientFunds) {
					refused.Add(1)
					err = nil
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}

	faults := map[fault]int{}
	for _, h := range p.Hits() {
		if h.method == http.MethodPost {
			faults[h.fault]++
		}
	}
	t.Logf("writes through the proxy by fault: %v; refused for funds: %d", faults, refused.Load())
	for f := refuse503; f < numFaults; f++ {
		assert.Positive(t, faults[f], "no %v injected: the test did not exercise it", f)
	}

	for _, id := range ids {
		acc, err := direct.Account(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, want[id], acc.Balances["USD"].Posted, "%s: balance is the sum of the successful calls", id)
		n := 0
		for _, err := range direct.AllEvents(ctx, id, 2, 0) { // after AccountOpened and the seed
			require.NoError(t, err)
			n++
		}
		assert.Equal(t, events[id], n, "%s: one event per successful call", id)
	}
}
