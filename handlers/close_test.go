package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

func TestCloseAccount(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(100, "carol", "dave")
	far := a.otherPartition("carol", "far")
	a.mustOpen(100, far)

	t.Run("an account that holds money stays open", func(t *testing.T) {
		before := a.digest()
		requireProblem(t, a.do("POST", "/v1/accounts/carol/close", ``), 409, "account_not_empty")
		require.Equal(t, before, a.digest())

		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/dave/holds", `{"id":"h","currency":"USD","amount":100,"timeout_seconds":600}`)
		a.mustDo(http.StatusOK, "POST", "/v1/accounts/dave/holds/h/capture", ``)
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/dave/deposits", `{"currency":"USD","amount":5}`)
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/dave/holds", `{"id":"h2","currency":"USD","amount":5,"timeout_seconds":600}`)
		before = a.digest()
		requireProblem(t, a.do("POST", "/v1/accounts/dave/close", ``), 409, "account_not_empty")
		require.Equal(t, before, a.digest(), "a pending hold keeps the account open")
	})

	t.Run("an empty account closes", func(t *testing.T) {
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/carol/withdrawals", `{"currency":"USD","amount":100}`)
		rec := a.mustDo(http.StatusOK, "POST", "/v1/accounts/carol/close", ``, "Idempotency-Key", "close-carol")
		var acc ledger.Account
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &acc))
		assert.Equal(t, "closed", acc.Status)
		assert.Equal(t, int64(4), acc.Version)
		assert.Equal(t, []string{"AccountOpened", "Deposited", "Withdrawn", "AccountClosed"}, a.eventTypes("carol"))
		assert.JSONEq(t, rec.Body.String(), a.mustDo(http.StatusOK, "GET", "/v1/accounts/carol", ``).Body.String())

		again := a.mustDo(http.StatusOK, "POST", "/v1/accounts/carol/close", ``, "Idempotency-Key", "close-carol")
		assert.Equal(t, rec.Body.String(), again.Body.String())
		assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
	})

	t.Run("a closed account refuses writes", func(t *testing.T) {
		for _, tc := range []struct{ name, path, body string }{
			{"close again", "/v1/accounts/carol/close", `{}`},
			{"deposit", "/v1/accounts/carol/deposits", `{"currency":"USD","amount":1}`},
			{"withdrawal", "/v1/accounts/carol/withdrawals", `{"currency":"USD","amount":1}`},
			{"hold", "/v1/accounts/carol/holds", `{"currency":"USD","amount":1,"timeout_seconds":60}`},
			{"transfer to it", "/v1/transfers", fmt.Sprintf(`{"from":%q,"to":"carol","currency":"USD","amount":1}`, far)},
			{"transfer from it", "/v1/transfers", fmt.Sprintf(`{"from":"carol","to":%q,"currency":"USD","amount":1}`, far)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := a.digest()
				requireProblem(t, a.do("POST", tc.path, tc.body), 409, "account_closed")
				require.Equal(t, before, a.digest())
			})
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		before := a.digest()
		requireProblem(t, a.do("POST", "/v1/accounts/nobody/close", ``), 404, "account_not_found")
		requireProblem(t, a.do("POST", "/v1/accounts/a:b/close", ``), 400, "invalid_request")
		requireProblem(t, a.do("POST", "/v1/accounts/"+far+"/close", `{"force":true}`), 400, "invalid_request")
		requireProblem(t, a.do("POST", "/v1/accounts/"+far+"/close", `[]`), 400, "invalid_request")
		requireProblem(t, a.do("POST", "/v1/accounts/"+far+"/close", `{}{}`), 400, "invalid_request")
		require.Equal(t, before, a.digest())
	})
}
