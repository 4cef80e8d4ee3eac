package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/internal/workload"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// httpTarget drives the workload through a running HTTP API.
type httpTarget struct {
	base   string
	client *http.Client
}

func (t httpTarget) send(ctx context.Context, method, path, key string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

func (t httpTarget) OpenAccount(ctx context.Context, id string, s workload.Setup) error {
	open := map[string]any{"id": id}
	if s.OverdraftLimit > 0 {
		open["overdraft_limit"] = map[string]int64{workload.Currency: s.OverdraftLimit}
	}
	status, body, err := t.send(ctx, http.MethodPost, "/v1/accounts", "", open)
	if err == nil && status != http.StatusCreated {
		err = fmt.Errorf("open %s: %d %s", id, status, body)
	}
	for _, a := range s.Alerts {
		if err != nil {
			break
		}
		alert := map[string]any{"id": a.ID, "currency": workload.Currency, "above": a.Threshold}
		if a.Below {
			alert = map[string]any{"id": a.ID, "currency": workload.Currency, "below": a.Threshold}
		}
		status, body, err = t.send(ctx, http.MethodPost, "/v1/accounts/"+id+"/alerts", "", alert)
		if err == nil && status != http.StatusCreated {
			err = fmt.Errorf("alert %s on %s: %d %s", a.ID, id, status, body)
		}
	}
	return err
}

func (t httpTarget) Do(ctx context.Context, op workload.Op) workload.Result {
	path := "/v1/accounts/" + op.Account + "/deposits"
	if op.Kind == workload.Withdrawal {
		path = "/v1/accounts/" + op.Account + "/withdrawals"
	}
	status, body, err := t.send(ctx, http.MethodPost, path, op.Key, map[string]any{"currency": workload.Currency, "amount": op.Amount})
	switch {
	case err != nil && ctx.Err() != nil:
		return workload.Result{Outcome: workload.Unknown, Code: "canceled"}
	case err != nil:
		return workload.Result{Outcome: workload.Rejected, Code: "transport: " + err.Error()}
	case status == http.StatusCreated:
		return workload.Result{Outcome: workload.Applied, Body: body}
	}
	var p handlers.Problem
	_ = json.Unmarshal(body, &p)
	if status == http.StatusServiceUnavailable {
		return workload.Result{Outcome: workload.Unknown, Code: p.Code}
	}
	if status == http.StatusConflict || status == http.StatusUnprocessableEntity {
		return workload.Result{Outcome: workload.Rejected, Code: p.Code}
	}
	return workload.Result{Outcome: workload.Rejected, Code: fmt.Sprintf("unexpected %d %s", status, body)}
}

func (t httpTarget) Events(ctx context.Context, account string) ([]ledger.Event, error) {
	var out []ledger.Event
	after := int64(0)
	for {
		status, raw, err := t.send(ctx, http.MethodGet, fmt.Sprintf("/v1/accounts/%s/events?after=%d&limit=1000", account, after), "", nil)
		if err != nil || status != http.StatusOK {
			return nil, fmt.Errorf("events of %s: %d %s %v", account, status, raw, err)
		}
		var page struct {
			Events []ledger.Event `json:"events"`
			Next   *int64         `json:"next"`
		}
		if err := json.Unmarshal(raw, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Events...)
		if page.Next == nil {
			return out, nil
		}
		after = *page.Next
	}
}

func (t httpTarget) Posted(ctx context.Context, account string) (int64, error) {
	status, raw, err := t.send(ctx, http.MethodGet, "/v1/accounts/"+account, "", nil)
	if err != nil || status != http.StatusOK {
		return 0, fmt.Errorf("account %s: %d %s %v", account, status, raw, err)
	}
	var acc ledger.Account
	if err := json.Unmarshal(raw, &acc); err != nil {
		return 0, err
	}
	return acc.Balances[workload.Currency].Posted, nil
}

// TestExactlyOnceOverHTTP is the randomized duplicate/cancellation workload of the ledger
// tests, sent over real HTTP connections (a cancelled request is a client that hangs up),
// on every Redis, in both modes, with group commit on and off.
func TestExactlyOnceOverHTTP(t *testing.T) {
	masters := redistest.MustStartN(t, 3)
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			for _, mode := range []ledger.Mode{ledger.ModeOptimistic, ledger.ModeLock} {
				for _, group := range []bool{true, false} {
					t.Run(fmt.Sprintf("%s/group-commit=%v", mode, group), func(t *testing.T) {
						cfg := ledger.Config{Prefix: fmt.Sprintf("http%d", time.Now().UnixNano()), Mode: mode, DisableGroupCommit: !group, MaxRetries: 200}
						if mode == ledger.ModeLock {
							cfg.Locker = mustLocker(t, masters, lock.Config{TTL: 5 * time.Second, WaitTimeout: 20 * time.Second})
						}
						l, err := ledger.Open(context.Background(), rdb, cfg)
						require.NoError(t, err)
						logs := &syncWriter{w: &bytes.Buffer{}}
						h, err := handlers.New(l, handlers.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
						require.NoError(t, err)
						srv := httptest.NewServer(validating(t, h))
						t.Cleanup(srv.Close)
						target := httpTarget{base: srv.URL, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}

						seed := uint64(time.Now().UnixNano())
						t.Logf("seed %d", seed)
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
						defer cancel()
						rep, err := workload.Run(ctx, target, workload.Config{
							Seed: seed, Accounts: 3, Rounds: 5, Keyless: 24, Keys: 10, Burst: 12,
							OtherBody: 0.2, Cancel: 0.1, Overdraft: 400,
							Alerts: []workload.Alert{{ID: "below-0", Below: true, Threshold: 0}, {ID: "above-300", Threshold: 300}},
						})
						t.Logf("%d requests: %d applied, %d rejected, %d unknown; %v", rep.Requests, rep.Applied, rep.Rejected, rep.Unknown, rep.Codes)
						require.NoError(t, err)
						require.Positive(t, rep.Applied)
						assert.NotContains(t, logs.String(), "level=ERROR", "no internal errors")
					})
				}
			}
		})
	}
}

// stubLedger answers every write with one error: for the HTTP mapping of errors that real
// Redis cannot be made to produce on demand (the ledger's own tests produce them on Redis).
type stubLedger struct {
	handlers.Ledger
	err error
}

func (s stubLedger) Deposit(context.Context, ledger.Deposit, ledger.WriteOptions) (ledger.Receipt, error) {
	return ledger.Receipt{}, s.err
}

func TestInternalAndOverloadedOverHTTP(t *testing.T) {
	t.Run("a panic in the ledger is a 500 without internals, logged with its stack", func(t *testing.T) {
		var logs bytes.Buffer
		h, err := handlers.New(stubLedger{err: &ledger.PanicError{Value: "boom at secret.go:12", Stack: []byte("goroutine 7 [running]:\nledger.(*Ledger).attempt")}},
			handlers.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		require.NoError(t, err)
		rec := httptest.NewRecorder()
		validating(t, h).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/accounts/a/deposits", strings.NewReader(`{"currency":"USD","amount":1}`)))
		require.Equal(t, http.StatusInternalServerError, rec.Code)
		assert.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
		var p handlers.Problem
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
		assert.Equal(t, "internal", p.Code)
		assert.NotContains(t, rec.Body.String(), "boom")
		assert.NotContains(t, rec.Body.String(), "goroutine")
		assert.Contains(t, logs.String(), "level=ERROR")
		assert.Contains(t, logs.String(), "ledger.(*Ledger).attempt", "the stack is logged")
	})
	t.Run("a script error is a 500, not a 503", func(t *testing.T) {
		h, err := handlers.New(stubLedger{err: fmt.Errorf("%w: redis: %w", ledger.ErrInternal, errors.New("ERR Error running script"))}, handlers.Config{})
		require.NoError(t, err)
		rec := httptest.NewRecorder()
		validating(t, h).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/accounts/a/deposits", strings.NewReader(`{"currency":"USD","amount":1}`)))
		require.Equal(t, http.StatusInternalServerError, rec.Code)
		assert.NotContains(t, rec.Body.String(), "script")
	})
	t.Run("a full account queue is 503 overloaded with Retry-After", func(t *testing.T) {
		h, err := handlers.New(stubLedger{err: ledger.ErrOverloaded}, handlers.Config{})
		require.NoError(t, err)
		rec := httptest.NewRecorder()
		validating(t, h).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/accounts/a/deposits", strings.NewReader(`{"currency":"USD","amount":1}`)))
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
		assert.NotEmpty(t, rec.Header().Get("Retry-After"))
		var p handlers.Problem
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
		assert.Equal(t, "overloaded", p.Code)
	})
}

// syncWriter serializes writes of concurrent handlers to one buffer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.w)
}
