package client

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/backoff"
)

// firstN injects f into the first n requests of each key (or method and path) for which
// match holds, then lets them through.
func firstN(n int, f fault, match func(r *http.Request) bool) func(*http.Request, int) fault {
	return func(r *http.Request, seen int) fault {
		if seen < n && match(r) {
			return f
		}
		return pass
	}
}

func posts(r *http.Request) bool { return r.Method == http.MethodPost }

// keysOf returns the Idempotency-Keys of hits to path.
func keysOf(hits []hit, path string) []string {
	var keys []string
	for _, h := range hits {
		if h.path == path {
			keys = append(keys, h.key)
		}
	}
	return keys
}

// requireOneDeposit checks that account holds exactly one deposit of amount: its balance
// and its events.
func requireOneDeposit(t *testing.T, c *Client, account string, amount int64) {
	t.Helper()
	assert.Equal(t, amount, posted(t, c, account))
	page, err := c.Events(context.Background(), account, EventsOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{EventAccountOpened, EventDeposited}, types(page.Events), "applied exactly once")
}

// TestRetrySameKey: a write answered 503 or 429 (Retry-After: 1), or whose connection is
// cut before or after the server applied it, is retried with the same Idempotency-Key until
// it succeeds, and is applied exactly once; the client waited at least Retry-After.
func TestRetrySameKey(t *testing.T) {
	for _, f := range []fault{refuse503, refuse429, dropBefore, dropAfter, fail503After} {
		t.Run(f.String(), func(t *testing.T) {
			s := startServer(t, handlers.Config{}, nil)
			direct, _ := newClient(t, s.URL)
			mustOpen(t, direct, 0, "alice")
			p := startProxy(t, s.URL, firstN(3, f, posts))
			c, w := newClient(t, p.URL)

			op, err := c.Deposit(context.Background(), "alice", "USD", 1500)
			require.NoError(t, err)
			assert.Equal(t, "alice:2", op.OperationID)
			assert.Equal(t, int64(1500), op.Account.Balances["USD"].Posted)

			keys := keysOf(p.Hits(), "/v1/accounts/alice/deposits")
			require.GreaterOrEqual(t, len(keys), 4, "3 faults, then the answer")
			assert.Regexp(t, `^[0-9a-f]{32}$`, keys[0])
			for _, k := range keys {
				assert.Equal(t, keys[0], k, "every attempt carries the call's key")
			}
			requireOneDeposit(t, direct, "alice", 1500)

			waited := w.all()
			require.Len(t, waited, 3, "one wait per retry")
			if f == refuse503 || f == refuse429 || f == fail503After {
				for _, d := range waited {
					assert.GreaterOrEqual(t, d, time.Second, "Retry-After: 1 honoured")
				}
			}
		})
	}
}

// TestRetryEveryMethod: every method succeeds through a proxy that answers its first two
// requests 503 and cuts the third after the server applied it (writes) — and a write's
// retries replay rather than apply again.
func TestRetryEveryMethod(t *testing.T) {
	ctx := context.Background()
	// InsecureAdmin: the dead-letter replay is an admin operation, refused without keys.
	s := startServer(t, handlers.Config{InsecureAdmin: true}, nil)
	p := startProxy(t, s.URL, func(r *http.Request, n int) fault {
		switch {
		case n < 2:
			return refuse503
		case n == 2 && r.Method == http.MethodPost:
			return dropAfter
		case n == 2:
			return dropBefore
		}
		return pass
	})
	c, _ := newClient(t, p.URL, WithRetry(RetryPolicy{MaxAttempts: 6, BaseDelay: time.Millisecond}))
	direct, _ := newClient(t, s.URL)

	_, err := c.OpenAccount(ctx, OpenAccountRequest{ID: "a"})
	require.NoError(t, err)
	_, err = c.OpenAccount(ctx, OpenAccountRequest{ID: "b"})
	require.NoError(t, err)
	_, err = c.Deposit(ctx, "a", "USD", 100)
	require.NoError(t, err)
	_, err = c.Withdraw(ctx, "a", "USD", 10)
	require.NoError(t, err)
	tr, err := c.CreateTransfer(ctx, TransferRequest{ID: "t1", From: "a", To: "b", Currency: "USD", Amount: 20})
	require.NoError(t, err)
	_, err = c.Transfer(ctx, tr.ID)
	require.NoError(t, err)
	_, err = c.WaitTransfer(ctx, tr.ID)
	require.NoError(t, err)
	h, err := c.PlaceHold(ctx, "a", HoldRequest{Currency: "USD", Amount: 30, TimeoutSeconds: 60})
	require.NoError(t, err)
	_, err = c.Hold(ctx, "a", h.ID)
	require.NoError(t, err)
	_, err = c.CaptureHold(ctx, "a", h.ID, CaptureRequest{Amount: 5, To: "b"})
	require.NoError(t, err)
	h2, err := c.PlaceHold(ctx, "a", HoldRequest{Currency: "USD", Amount: 1, TimeoutSeconds: 60})
	require.NoError(t, err)
	_, err = c.VoidHold(ctx, "a", h2.ID)
	require.NoError(t, err)
	res, err := c.Batch(ctx, BatchRequest{Atomic: false, Operations: []BatchOp{{Type: OpDeposit, Account: "b", Currency: "USD", Amount: 7}}})
	require.NoError(t, err)
	require.NoError(t, res.Results[0].Err())
	_, err = c.Account(ctx, "a")
	require.NoError(t, err)
	_, err = c.Events(ctx, "a", EventsOptions{})
	require.NoError(t, err)
	_, err = c.RelayStatus(ctx)
	require.NoError(t, err)
	_, err = c.ReplayDeadLetters(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Health(ctx))
	// The probe does not retry: each 503 is the probe's answer.
	for range 2 {
		requireAPIError(t, c.Ready(ctx), http.StatusServiceUnavailable, ErrStoreUnavailable)
	}
	if err := c.Ready(ctx); err != nil { // the cut connection (unless net/http retried it itself)
		require.NoError(t, c.Ready(ctx))
	}

	assert.Equal(t, int64(100-10-20-5), posted(t, direct, "a"), "each write applied once")
	assert.Equal(t, int64(20+5+7), posted(t, direct, "b"))
	page, err := direct.Events(ctx, "a", EventsOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{EventAccountOpened, EventDeposited, EventWithdrawn, EventTransferDebited,
		EventHoldPlaced, EventHoldCaptured, EventHoldPlaced, EventHoldVoided}, types(page.Events))
	for _, h := range p.Hits() {
		if h.method == http.MethodPost && h.path != "/v1/relay/dead-letters/replay" {
			assert.NotEmpty(t, h.key, "%s %s without Idempotency-Key", h.method, h.path)
		}
	}
}

// TestNoRetry: other 4xx and 500 are answered after one attempt, and so is a 503 whose
// Retry-After passes MaxRetryAfter (the caller learns how long to wait); Ready never retries.
func TestNoRetry(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	direct, _ := newClient(t, s.URL)
	mustOpen(t, direct, 5, "alice")

	p := startProxy(t, s.URL, func(*http.Request, int) fault { return pass })
	c, _ := newClient(t, p.URL)
	_, err := c.Withdraw(ctx, "alice", "USD", 50)
	requireAPIError(t, err, http.StatusUnprocessableEntity, ErrInsufficientFunds)
	_, err = c.Account(ctx, "nobody")
	requireAPIError(t, err, http.StatusNotFound, ErrAccountNotFound)
	_, err = c.Deposit(ctx, "alice", "USD", 1, WithIdempotencyKey("has space"))
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)
	assert.Len(t, p.Hits(), 3, "one attempt each")

	always := startProxy(t, s.URL, func(*http.Request, int) fault { return refuse429 })
	impatient, w := newClient(t, always.URL, WithRetry(RetryPolicy{MaxRetryAfter: 500 * time.Millisecond}))
	_, err = impatient.Deposit(ctx, "alice", "USD", 1)
	e := requireAPIError(t, err, http.StatusTooManyRequests, ErrRateLimited)
	assert.Equal(t, time.Second, e.RetryAfter)
	assert.Equal(t, "proxy-req", e.RequestID)
	assert.Len(t, always.Hits(), 1)
	assert.Empty(t, w.all())

	down := startProxy(t, s.URL, func(*http.Request, int) fault { return refuse503 })
	probe, _ := newClient(t, down.URL)
	requireAPIError(t, probe.Ready(ctx), http.StatusServiceUnavailable, ErrStoreUnavailable)
	assert.Len(t, down.Hits(), 1)
}

// TestWithoutIdempotencyKey: a write sent without a key carries no Idempotency-Key header
// and is never retried, even on a retryable answer or a cut connection (the first attempt
// may have been applied); a transfer's ID still names it.
func TestWithoutIdempotencyKey(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	direct, _ := newClient(t, s.URL)
	mustOpen(t, direct, 100, "alice", "bob")

	for _, f := range []fault{refuse503, dropAfter} {
		t.Run(f.String(), func(t *testing.T) {
			p := startProxy(t, s.URL, firstN(1, f, posts))
			c, w := newClient(t, p.URL)
			_, err := c.Deposit(ctx, "alice", "USD", 7, WithoutIdempotencyKey())
			require.Error(t, err)
			require.Len(t, p.Hits(), 1, "one attempt")
			assert.Empty(t, p.Hits()[0].key)
			assert.Empty(t, w.all(), "no wait for a retry")
		})
	}

	p := startProxy(t, s.URL, func(*http.Request, int) fault { return pass })
	c, _ := newClient(t, p.URL)
	_, err := c.Deposit(ctx, "bob", "USD", 3, WithoutIdempotencyKey())
	require.NoError(t, err)
	_, err = c.CreateTransfer(ctx, TransferRequest{ID: "t-unkeyed", From: "bob", To: "alice", Currency: "USD", Amount: 1}, WithoutIdempotencyKey())
	require.NoError(t, err)
	hits := p.Hits()
	require.Len(t, hits, 2)
	assert.Empty(t, hits[0].key, "deposit without a key")
	assert.Equal(t, "t-unkeyed", hits[1].key, "the transfer's ID is its key")
}

// TestRetriesExhausted: after MaxAttempts the last answer is returned (an *Error), having
// used the same key every time; for transport errors, the transport error.
func TestRetriesExhausted(t *testing.T) {
	s := startServer(t, handlers.Config{}, nil)
	p := startProxy(t, s.URL, func(*http.Request, int) fault { return refuse503 })
	c, w := newClient(t, p.URL, WithRetry(RetryPolicy{MaxAttempts: 3}))
	_, err := c.Deposit(context.Background(), "alice", "USD", 1)
	requireAPIError(t, err, http.StatusServiceUnavailable, ErrStoreUnavailable)
	assert.ErrorIs(t, err, ErrUnavailable)
	keys := keysOf(p.Hits(), "/v1/accounts/alice/deposits")
	require.Len(t, keys, 3)
	assert.Equal(t, []string{keys[0], keys[0], keys[0]}, keys)
	assert.Len(t, w.all(), 2)

	cut := startProxy(t, s.URL, func(*http.Request, int) fault { return dropBefore })
	c, _ = newClient(t, cut.URL, WithRetry(RetryPolicy{MaxAttempts: 2}))
	_, err = c.Account(context.Background(), "alice")
	require.Error(t, err)
	var apiErr *Error
	assert.False(t, errors.As(err, &apiErr), "no answer: %v", err)
	assert.Contains(t, err.Error(), "GET /v1/accounts/alice")
	assert.GreaterOrEqual(t, len(cut.Hits()), 2)
}

// TestContextEndsRetrying: a call ends at once with context.Canceled when its context is
// cancelled during an attempt or while it waits out a long Retry-After (keeping the last
// answer's error); a deadline that ends before the next attempt could start returns the
// last answer without waiting.
func TestContextEndsRetrying(t *testing.T) {
	s := startServer(t, handlers.Config{}, nil)

	t.Run("during an attempt", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		p := startProxy(t, s.URL, func(*http.Request, int) fault { return refuse503 })
		p.onHit = func(hit) { cancel() }
		c, _ := newClient(t, p.URL)
		_, err := c.Deposit(ctx, "alice", "USD", 1)
		require.ErrorIs(t, err, context.Canceled)
		assert.Len(t, p.Hits(), 1, "no attempt after the cancellation")
	})

	t.Run("while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		p := startProxy(t, s.URL, func(*http.Request, int) fault { return refuse503 })
		p.retryAfter = "20"
		c, _ := newClient(t, p.URL)
		var waited []time.Duration
		c.wait = func(ctx context.Context, d time.Duration) error {
			waited = append(waited, d)
			cancel()
			return backoff.Wait(ctx, d) // the real wait: it must end with ctx, not after d
		}
		start := time.Now()
		_, err := c.Deposit(ctx, "alice", "USD", 1)
		require.ErrorIs(t, err, context.Canceled)
		assert.ErrorIs(t, err, ErrStoreUnavailable, "the last answer is kept")
		assert.Less(t, time.Since(start), 10*time.Second, "did not wait out Retry-After: 20")
		assert.Equal(t, []time.Duration{20 * time.Second}, waited)
		assert.Len(t, p.Hits(), 1, "no attempt after the cancellation")
	})

	t.Run("deadline too close", func(t *testing.T) {
		p := startProxy(t, s.URL, func(*http.Request, int) fault { return refuse503 })
		c, w := newClient(t, p.URL)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, err := c.Deposit(ctx, "alice", "USD", 1)
		requireAPIError(t, err, http.StatusServiceUnavailable, ErrStoreUnavailable)
		assert.NoError(t, ctx.Err(), "returned before the deadline")
		assert.Empty(t, w.all(), "Retry-After: 1 cannot fit in a 500ms deadline: no wait")
		assert.Len(t, p.Hits(), 1)
	})
}
