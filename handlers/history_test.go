package handlers_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

// TestBalanceHistoryOverHTTP walks through GET /v1/accounts/{id}/balances and its refusals.
func TestBalanceHistoryOverHTTP(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(100, "alice") // version 1 opened, 2 deposited 100
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", `{"currency":"USD","amount":30,"timeout_seconds":3600}`)
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/withdrawals", `{"currency":"USD","amount":50}`)

	past := func(query string) ledger.PastBalances {
		t.Helper()
		var out ledger.PastBalances
		require.NoError(t, json.Unmarshal(a.mustDo(http.StatusOK, "GET", "/v1/accounts/alice/balances"+query, ``).Body.Bytes(), &out))
		return out
	}
	require.Equal(t, map[string]ledger.Balance{}, past("?at_version=1").Balances)
	require.Equal(t, map[string]ledger.Balance{"USD": {Posted: 100, Available: 100}}, past("?at_version=2").Balances)
	v3 := past("?at_version=3")
	require.Equal(t, map[string]ledger.Balance{"USD": {Posted: 100, Held: 30, Available: 70}}, v3.Balances)
	latest := past("")
	require.Equal(t, int64(4), latest.Version)
	require.Equal(t, map[string]ledger.Balance{"USD": {Posted: 50, Held: 30, Available: 20}}, latest.Balances)
	// By time: the event at that moment, and the one before a nanosecond earlier.
	require.Equal(t, int64(3), past("?at="+url.QueryEscape(v3.Time.Format(time.RFC3339Nano))).Version)
	require.Equal(t, int64(4), past("?at="+url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339))).Version)

	for _, q := range []string{"?at_version=0", "?at_version=-1", "?at_version=x", "?at_version=1.5", "?at=yesterday",
		"?at=1969-12-31T23:59:59Z", "?at_version=1&at=" + url.QueryEscape(time.Now().Format(time.RFC3339))} {
		requireProblem(t, a.do("GET", "/v1/accounts/alice/balances"+q, ``), http.StatusBadRequest, "invalid_request")
	}
	requireProblem(t, a.do("GET", "/v1/accounts/alice/balances?at_version=5", ``), http.StatusNotFound, "not_found")
	requireProblem(t, a.do("GET", "/v1/accounts/alice/balances?at=2020-01-01T00:00:00Z", ``), http.StatusNotFound, "not_found")
	requireProblem(t, a.do("GET", "/v1/accounts/nobody/balances", ``), http.StatusNotFound, "account_not_found")
}
