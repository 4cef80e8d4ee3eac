package handlers_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// TestRequestTimeoutAnswers503 freezes the Redis under a running API and checks that a
// write and a readiness probe are answered 503 with Retry-After once the request timeout
// passes. The client has no read timeout of its own, so without the request's deadline
// both would wait for the frozen Redis forever.
//
// Group commit is off: a request that leads a group commit waits for its batch, which is
// bounded by ledger.Config.BatchTimeout rather than by any one request's deadline.
func TestRequestTimeoutAnswers503(t *testing.T) {
	srv := redistest.MustStart(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, ReadTimeout: -1, WriteTimeout: -1})
	t.Cleanup(func() { rdb.Close() })
	const timeout = 300 * time.Millisecond
	a := newAPI(t, rdb, ledger.Config{DisableGroupCommit: true}, handlers.Config{RequestTimeout: timeout})
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts", `{"id":"alice"}`)

	srv.Pause()
	t.Cleanup(srv.Resume)
	for _, tc := range []struct{ name, method, path, body string }{
		{"deposit", "POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":1}`},
		{"readyz", "GET", "/readyz", ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan *httptest.ResponseRecorder, 1)
			start := time.Now()
			go func() {
				rec := httptest.NewRecorder()
				validating(t, a.h).ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
				done <- rec
			}()
			select {
			case rec := <-done:
				t.Logf("answered after %v", time.Since(start))
				requireProblem(t, rec, http.StatusServiceUnavailable, "store_unavailable")
				assert.NotEmpty(t, rec.Header().Get("Retry-After"))
			case <-time.After(timeout + 10*time.Second):
				t.Fatal("no answer long after the request timeout")
			}
		})
	}
}
