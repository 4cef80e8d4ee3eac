package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

// TestOverdraftLimitRoutes: overdraft_limit on open and PATCH, shown on the account;
// malformed limits are 400s that change nothing; PATCH replays with its Idempotency-Key; a
// withdrawal refused over the limit stays refused for its key after the limit is raised.
func TestOverdraftLimitRoutes(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts", `{"id":"od","overdraft_limit":{"USD":50,"EUR":0}}`)
	var acc ledger.Account
	require.NoError(t, json.Unmarshal(a.mustDo(http.StatusOK, "GET", "/v1/accounts/od", ``).Body.Bytes(), &acc))
	assert.Equal(t, map[string]int64{"USD": 50}, acc.OverdraftLimit, "limits of 0 are not kept")

	before := a.digest()
	many := []string{}
	for i := range ledger.MaxOverdraftLimits + 1 {
		many = append(many, fmt.Sprintf(`"C%02d":1`, i))
	}
	for _, body := range []string{`{"overdraft_limit":{"USD":-1}}`, `{"overdraft_limit":{"USD":1.5}}`, `{"overdraft_limit":{"USD":1e3}}`,
		`{"overdraft_limit":{"USD":"5"}}`, `{"overdraft_limit":{"usd":5}}`, `{"overdraft_limit":{"US D":5}}`, `{"overdraft_limit":{}}`,
		`{"overdraft_limit":null}`, `{}`, `{"overdraft_limit":5}`, `{"overdraft_limit":{"USD":5},"allow_negative":true}`,
		`{"overdraft_limit":{"USD":99999999999999999999}}`, `{"overdraft_limit":{` + strings.Join(many, ",") + `}}`} {
		requireProblem(t, a.do("PATCH", "/v1/accounts/od", body, "Idempotency-Key", "bad"), http.StatusBadRequest, "invalid_request")
	}
	requireProblem(t, a.do("POST", "/v1/accounts", `{"id":"neg","overdraft_limit":{"USD":-5}}`), http.StatusBadRequest, "invalid_request")
	require.Equal(t, before, a.digest(), "malformed limits change nothing")

	requireProblem(t, a.do("POST", "/v1/accounts/od/withdrawals", `{"currency":"USD","amount":80}`, "Idempotency-Key", "w1"),
		http.StatusUnprocessableEntity, "insufficient_funds")
	first := a.mustDo(http.StatusOK, "PATCH", "/v1/accounts/od", `{"overdraft_limit":{"USD":100}}`, "Idempotency-Key", "p1")
	again := a.mustDo(http.StatusOK, "PATCH", "/v1/accounts/od", `{"overdraft_limit":{"USD":100}}`, "Idempotency-Key", "p1")
	assert.Equal(t, first.Body.String(), again.Body.String())
	assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
	rec := a.do("POST", "/v1/accounts/od/withdrawals", `{"currency":"USD","amount":80}`, "Idempotency-Key", "w1")
	requireProblem(t, rec, http.StatusUnprocessableEntity, "insufficient_funds")
	assert.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"), "the refusal is final for its key")
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/od/withdrawals", `{"currency":"USD","amount":80}`, "Idempotency-Key", "w2")
	assert.Equal(t, int64(-80), a.balance("od").Available)
	requireProblem(t, a.do("POST", "/v1/accounts/od/holds", `{"currency":"USD","amount":21,"timeout_seconds":60}`),
		http.StatusUnprocessableEntity, "insufficient_funds")
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/od/holds", `{"currency":"USD","amount":20,"timeout_seconds":60}`)
	// Lowering below the debt is accepted.
	a.mustDo(http.StatusOK, "PATCH", "/v1/accounts/od", `{"overdraft_limit":{"USD":10}}`)
	assert.Equal(t, int64(-100), a.balance("od").Available)
	requireProblem(t, a.do("PATCH", "/v1/accounts/nobody", `{"overdraft_limit":{"USD":1}}`), http.StatusNotFound, "account_not_found")
	assert.Equal(t, []string{ledger.EventAccountOpened, ledger.EventOverdraftLimitSet, ledger.EventWithdrawn, ledger.EventHoldPlaced,
		ledger.EventOverdraftLimitSet}, a.eventTypes("od"))
}

// TestAlertRoutes: create, list and delete alerts over HTTP; malformed ones are 400s that
// change nothing; a crossing appends a BalanceAlert right after the crossing event.
func TestAlertRoutes(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(100, "al")
	rec := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/al/alerts", `{"id":"low","currency":"USD","below":50}`)
	assert.JSONEq(t, `{"id":"low","account":"al","currency":"USD","below":50}`, rec.Body.String())
	auto := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/al/alerts", `{"currency":"USD","above":0}`, "Idempotency-Key", "k")
	again := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/al/alerts", `{"currency":"USD","above":0}`, "Idempotency-Key", "k")
	assert.Equal(t, auto.Body.String(), again.Body.String(), "a random ID is kept by the key's record")
	requireProblem(t, a.do("POST", "/v1/accounts/al/alerts", `{"id":"low","currency":"USD","above":1}`), http.StatusConflict, "alert_exists")

	before := a.digest()
	for _, body := range []string{`{"currency":"USD"}`, `{"currency":"USD","below":1,"above":2}`, `{"currency":"USD","below":1.5}`,
		`{"currency":"usd","below":1}`, `{"below":1}`, `{"id":"a:b","currency":"USD","below":1}`, `{"currency":"USD","below":"1"}`,
		`{"currency":"USD","below":1,"x":1}`} {
		requireProblem(t, a.do("POST", "/v1/accounts/al/alerts", body), http.StatusBadRequest, "invalid_request")
	}
	require.Equal(t, before, a.digest(), "malformed alerts change nothing")

	var page struct {
		Alerts []ledger.Alert `json:"alerts"`
	}
	require.NoError(t, json.Unmarshal(a.mustDo(http.StatusOK, "GET", "/v1/accounts/al/alerts", ``).Body.Bytes(), &page))
	require.Len(t, page.Alerts, 2)

	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/al/withdrawals", `{"currency":"USD","amount":60}`)
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/al/withdrawals", `{"currency":"USD","amount":10}`) // still below: no alert
	assert.Equal(t, []string{ledger.EventAccountOpened, ledger.EventDeposited, ledger.EventAlertCreated, ledger.EventAlertCreated,
		ledger.EventWithdrawn, ledger.EventBalanceAlert, ledger.EventWithdrawn}, a.eventTypes("al"))

	a.mustDo(http.StatusOK, "DELETE", "/v1/accounts/al/alerts/low", ``)
	requireProblem(t, a.do("DELETE", "/v1/accounts/al/alerts/low", ``), http.StatusNotFound, "not_found")
	requireProblem(t, a.do("GET", "/v1/accounts/nobody/alerts", ``), http.StatusNotFound, "account_not_found")
}
