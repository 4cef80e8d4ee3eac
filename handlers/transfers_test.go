package handlers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

func decodeTransfer(t *testing.T, rec *httptest.ResponseRecorder) ledger.Transfer {
	t.Helper()
	var tr ledger.Transfer
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &tr), rec.Body.String())
	return tr
}

func TestTransfers(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	// Placement tags: both accounts live in the partition of "shop1".
	alice, bob := "shop1..alice", "shop1..bob"
	require.Equal(t, a.l.Partition(alice), a.l.Partition(bob))
	far := a.otherPartition(alice, "far")
	a.mustOpen(1000, alice, far)
	a.mustOpen(0, bob)

	t.Run("within a partition: one script, 201 completed", func(t *testing.T) {
		rec := a.mustDo(http.StatusCreated, "POST", "/v1/transfers",
			`{"id":"t1","from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":300,"metadata":{"order":"42"}}`)
		assert.Equal(t, "/v1/transfers/t1", rec.Header().Get("Location"))
		assert.Empty(t, rec.Header().Get("Idempotent-Replayed"))
		tr := decodeTransfer(t, rec)
		assert.Equal(t, ledger.Transfer{ID: "t1", From: alice, To: bob, Currency: "USD", Amount: 300, Status: "completed",
			Metadata: map[string]string{"order": "42"}, CreatedAt: tr.CreatedAt, CompletedAt: tr.CompletedAt}, tr)
		require.NotNil(t, tr.CompletedAt)
		assert.Equal(t, ledger.Balance{Posted: 700, Available: 700}, a.balance(alice))
		assert.Equal(t, ledger.Balance{Posted: 300, Available: 300}, a.balance(bob))
		assert.Equal(t, []string{"AccountOpened", "Deposited", "TransferDebited"}, a.eventTypes(alice))
		assert.Equal(t, []string{"AccountOpened", "TransferCredited"}, a.eventTypes(bob))

		got := a.mustDo(http.StatusOK, "GET", "/v1/transfers/t1", ``)
		assert.JSONEq(t, rec.Body.String(), got.Body.String())
	})

	t.Run("across partitions: the saga finishes inline, 201 completed", func(t *testing.T) {
		rec := a.mustDo(http.StatusCreated, "POST", "/v1/transfers",
			fmt.Sprintf(`{"id":"t2","from":%q,"to":%q,"currency":"USD","amount":250}`, far, bob))
		tr := decodeTransfer(t, rec)
		assert.Equal(t, "completed", tr.Status)
		require.NotNil(t, tr.CompletedAt)
		assert.Equal(t, ledger.Balance{Posted: 750, Available: 750}, a.balance(far))
		assert.Equal(t, ledger.Balance{Posted: 550, Available: 550}, a.balance(bob))
		got := decodeTransfer(t, a.mustDo(http.StatusOK, "GET", "/v1/transfers/t2", ``))
		assert.Equal(t, "completed", got.Status)
	})

	t.Run("the same id and request replays; another request is 409", func(t *testing.T) {
		body := `{"id":"t1","from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":300,"metadata":{"order":"42"}}`
		first := a.mustDo(http.StatusOK, "GET", "/v1/transfers/t1", ``)
		before := a.digest()
		rec := a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body)
		assert.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"))
		assert.Equal(t, first.Body.String(), rec.Body.String(), "byte for byte")
		assert.Equal(t, before, a.digest(), "a replay applies nothing")

		for name, other := range map[string]string{
			"amount":   `{"id":"t1","from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":301,"metadata":{"order":"42"}}`,
			"to":       fmt.Sprintf(`{"id":"t1","from":"shop1..alice","to":%q,"currency":"USD","amount":300,"metadata":{"order":"42"}}`, far),
			"from":     fmt.Sprintf(`{"id":"t1","from":%q,"to":"shop1..bob","currency":"USD","amount":300,"metadata":{"order":"42"}}`, far),
			"metadata": `{"id":"t1","from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":300}`,
		} {
			t.Run(name, func(t *testing.T) {
				requireProblem(t, a.do("POST", "/v1/transfers", other), http.StatusConflict, "idempotency_key_reused")
				assert.Equal(t, before, a.digest())
			})
		}
	})

	t.Run("without an id the Idempotency-Key names the transfer", func(t *testing.T) {
		body := `{"from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":5}`
		rec := a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body, "Idempotency-Key", "pay-7")
		assert.Equal(t, "pay-7", decodeTransfer(t, rec).ID, "a key that is a valid ID is the ID")
		again := a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body, "Idempotency-Key", "pay-7")
		assert.Equal(t, rec.Body.String(), again.Body.String())
		assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))

		key := "order#7/2026" // printable, but not an ID
		sum := sha256.Sum256([]byte(key))
		rec = a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body, "Idempotency-Key", key)
		assert.Equal(t, "k-"+hex.EncodeToString(sum[:16]), decodeTransfer(t, rec).ID)
		a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body, "Idempotency-Key", key)
		assert.Equal(t, ledger.Balance{Posted: 690, Available: 690}, a.balance(alice), "two keys, two transfers of 5")

		before := a.digest()
		requireProblem(t, a.do("POST", "/v1/transfers", `{"from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":6}`,
			"Idempotency-Key", key), http.StatusConflict, "idempotency_key_reused")
		requireProblem(t, a.do("POST", "/v1/transfers", body, "Idempotency-Key", "has spaces"), http.StatusBadRequest, "invalid_request")
		assert.Equal(t, before, a.digest())
	})

	t.Run("without an id or key every request is a new transfer", func(t *testing.T) {
		body := `{"from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":1}`
		one := decodeTransfer(t, a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body))
		two := decodeTransfer(t, a.mustDo(http.StatusCreated, "POST", "/v1/transfers", body))
		assert.NotEqual(t, one.ID, two.ID)
		assert.Regexp(t, `^t-[A-Za-z0-9]+$`, one.ID)
		a.mustDo(http.StatusOK, "GET", "/v1/transfers/"+one.ID, ``)
	})

	t.Run("refused transfers move nothing; a refused id keeps its refusal", func(t *testing.T) {
		a.mustOpen(0, "shop1..closed")
		a.mustDo(http.StatusOK, "POST", "/v1/accounts/shop1..closed/close", ``)
		farClosed := a.otherPartition(alice, "farclosed")
		a.mustOpen(0, farClosed)
		a.mustDo(http.StatusOK, "POST", "/v1/accounts/"+farClosed+"/close", ``)
		n := 0
		tr := func(from, to string, amount int) string {
			n++
			return fmt.Sprintf(`{"id":"refused-%d","from":%q,"to":%q,"currency":"USD","amount":%d}`, n, from, to, amount)
		}
		for _, tc := range []struct {
			name, body string
			status     int
			code       string
		}{
			{"unknown source", tr("nobody", bob, 1), 404, "account_not_found"},
			{"unknown destination", tr(alice, "nobody", 1), 404, "account_not_found"},
			{"unknown destination in another partition", tr(alice, a.otherPartition(alice, "ghost"), 1), 404, "account_not_found"},
			{"closed destination", tr(alice, "shop1..closed", 1), 409, "account_closed"},
			{"closed destination in another partition", tr(alice, farClosed, 1), 409, "account_closed"},
			{"closed source", tr("shop1..closed", alice, 1), 409, "account_closed"},
			{"insufficient funds", tr(alice, bob, 100000), 422, "insufficient_funds"},
			{"insufficient funds across partitions", tr(far, bob, 100000), 422, "insufficient_funds"},
			{"from equals to", tr(alice, alice, 1), 400, "invalid_request"},
			{"zero amount", tr(alice, bob, 0), 400, "invalid_request"},
			{"negative amount", tr(alice, bob, -1), 400, "invalid_request"},
			{"missing amount", `{"from":"shop1..alice","to":"shop1..bob","currency":"USD"}`, 400, "invalid_request"},
			{"float amount", `{"from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":1.0}`, 400, "invalid_request"},
			{"missing to", `{"from":"shop1..alice","currency":"USD","amount":1}`, 400, "invalid_request"},
			{"missing from", `{"to":"shop1..alice","currency":"USD","amount":1}`, 400, "invalid_request"},
			{"bad currency", `{"from":"shop1..alice","to":"shop1..bob","currency":"usd","amount":1}`, 400, "invalid_request"},
			{"bad id", `{"id":"a:b","from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":1}`, 400, "invalid_request"},
			{"bad to", `{"from":"shop1..alice","to":"{x}","currency":"USD","amount":1}`, 400, "invalid_request"},
			{"unknown field", `{"from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":1,"memo":"x"}`, 400, "invalid_request"},
			{"metadata not strings", `{"from":"shop1..alice","to":"shop1..bob","currency":"USD","amount":1,"metadata":{"a":1}}`, 400, "invalid_request"},
			{"empty body", ``, 400, "invalid_request"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before, lasting := a.digest(), a.lastingDigest()
				first := a.do("POST", "/v1/transfers", tc.body)
				requireProblem(t, first, tc.status, tc.code)
				if tc.status == http.StatusBadRequest {
					require.Equal(t, before, a.digest(), "a malformed transfer writes nothing")
					return
				}
				// Refused on what the ledger holds: the refusal is kept under the id (until
				// the idempotency TTL), nothing else changes, and the same request again
				// gets the same answer.
				require.Equal(t, lasting, a.lastingDigest(), "a refused transfer writes nothing lasting")
				again := a.do("POST", "/v1/transfers", tc.body)
				require.Equal(t, first.Code, again.Code)
				require.Equal(t, first.Body.String(), again.Body.String())
				require.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
				var body struct{ ID string }
				require.NoError(t, json.Unmarshal([]byte(tc.body), &body))
				requireProblem(t, a.do("GET", "/v1/transfers/"+body.ID, ``), 404, "not_found")
			})
		}
	})

	t.Run("reading", func(t *testing.T) {
		requireProblem(t, a.do("GET", "/v1/transfers/nope", ``), 404, "not_found")
		requireProblem(t, a.do("GET", "/v1/transfers/a:b", ``), 400, "invalid_request")
	})
}

// transferStub answers CreateTransfer with a fixed result: a cross-partition transfer that
// is still pending (or was refunded) cannot be produced on demand over HTTP, because the
// request drives the saga inline; the ledger's own tests make them on Redis.
type transferStub struct {
	handlers.Ledger
	res ledger.TransferResult
}

func (s transferStub) CreateTransfer(context.Context, ledger.TransferRequest) (ledger.TransferResult, error) {
	return s.res, nil
}

func TestTransferStatusCodes(t *testing.T) {
	for _, tc := range []struct {
		status   string
		replayed bool
		code     int
	}{
		{ledger.TransferPending, false, http.StatusAccepted},
		{ledger.TransferPending, true, http.StatusAccepted},
		{ledger.TransferCompleted, false, http.StatusCreated},
		{ledger.TransferRefunded, false, http.StatusCreated},
	} {
		t.Run(fmt.Sprintf("%s replayed=%v", tc.status, tc.replayed), func(t *testing.T) {
			tr := ledger.Transfer{ID: "t9", From: "a", To: "b", Currency: "USD", Amount: 5, Status: tc.status}
			h, err := handlers.New(transferStub{res: ledger.TransferResult{Transfer: tr, Replayed: tc.replayed}}, handlers.Config{})
			require.NoError(t, err)
			rec := httptest.NewRecorder()
			validating(t, h).ServeHTTP(rec, httptest.NewRequest("POST", "/v1/transfers",
				strings.NewReader(`{"id":"t9","from":"a","to":"b","currency":"USD","amount":5}`)))
			require.Equal(t, tc.code, rec.Code, rec.Body.String())
			assert.Equal(t, "/v1/transfers/t9", rec.Header().Get("Location"))
			assert.Equal(t, tc.status, decodeTransfer(t, rec).Status)
			if tc.replayed {
				assert.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"))
			}
		})
	}
}
