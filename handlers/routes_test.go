package handlers_test

import (
	"net/http"
	"testing"

	"github.com/tally-ledger/tally/handlers"
)

// TestNoRedirects: a path the API does not serve is a 404 problem, never gin's HTML
// redirect to a path it guessed (a trailing slash, a doubled slash). FuzzRequests found the
// 301 for GET /v1/accounts/%2F.
func TestNoRedirects(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts", `{"id":"alice"}`)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/accounts/"},
		{"GET", "/v1/accounts/alice/"},
		{"POST", "/v1/accounts/"},
		{"GET", "/v1//accounts/alice"},
		{"GET", "/v1/accounts/%2F"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			before := a.digest()
			requireProblem(t, a.do(tc.method, tc.path, `{"id":"bob"}`), http.StatusNotFound, "not_found")
			if before != a.digest() {
				t.Fatal("a refused request changed Redis")
			}
		})
	}
}
