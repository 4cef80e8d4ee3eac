package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// TestRelayCommandWebhook runs `tally relay` with a webhook sink against a local receiver:
// every committed event arrives, signed, and is applied once by a receiver that dedupes.
func TestRelayCommandWebhook(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	l, err := ledger.Open(ctx, srv.Client(), ledger.Config{})
	require.NoError(t, err)
	const accounts, deposits = 5, 20
	for a := 0; a < accounts; a++ {
		id := string(rune('a' + a))
		_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id}, ledger.WriteOptions{})
		require.NoError(t, err)
		for i := 0; i < deposits; i++ {
			_, err := l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 1}, ledger.WriteOptions{})
			require.NoError(t, err)
		}
	}

	secret := []byte("whsec-test")
	var mu sync.Mutex
	seen := map[string]bool{}
	last := map[string]int64{}
	var badSig, outOfOrder int
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if !outbox.VerifySignature(secret, body, r.Header.Get(outbox.WebhookSignatureHeader)) {
			badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		events, err := outbox.DecodeWebhookBody(body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, e := range events {
			if seen[e.ID] {
				continue // a redelivery: the receiver dedupes by event ID
			}
			seen[e.ID] = true
			if e.Version != last[e.Account]+1 {
				outOfOrder++
			}
			last[e.Account] = e.Version
		}
	}))
	defer receiver.Close()

	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(rctx, []string{"relay", "--redis", srv.Addr(), "--webhook", receiver.URL,
			"--webhook-secret", string(secret), "--projector=false", "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == accounts*(deposits+1)
	}, 20*time.Second, 20*time.Millisecond, "every event reaches the webhook")
	cancel()
	require.NoError(t, <-done)
	assert.Zero(t, badSig, "every delivery is signed")
	assert.Zero(t, outOfOrder, "per-account version order")
}
