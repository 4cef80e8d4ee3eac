package handlers_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

func decodeHold(t *testing.T, rec *httptest.ResponseRecorder) ledger.Hold {
	t.Helper()
	var h ledger.Hold
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &h), rec.Body.String())
	return h
}

func holdBody(id string, amount int64, timeout int64) string {
	return fmt.Sprintf(`{"id":%q,"currency":"USD","amount":%d,"timeout_seconds":%d}`, id, amount, timeout)
}

func TestHolds(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(1000, "alice")
	a.mustOpen(0, "alice..shop")
	far := a.otherPartition("alice", "far")
	a.mustOpen(0, far)
	const holds = "/v1/accounts/alice/holds/"

	t.Run("place, capture part, read", func(t *testing.T) {
		start := time.Now().UTC()
		rec := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", holdBody("h1", 400, 3600))
		assert.Equal(t, holds+"h1", rec.Header().Get("Location"))
		h := decodeHold(t, rec)
		assert.Equal(t, "pending", h.Status)
		assert.Equal(t, int64(400), h.Amount)
		assert.WithinDuration(t, start.Add(time.Hour), h.ExpiresAt, 5*time.Second)
		assert.Equal(t, ledger.Balance{Posted: 1000, Held: 400, Available: 600}, a.balance("alice"))

		rec = a.mustDo(http.StatusOK, "POST", holds+"h1/capture", `{"amount":150}`)
		h = decodeHold(t, rec)
		assert.Equal(t, "captured", h.Status)
		assert.Equal(t, int64(150), h.Captured)
		assert.False(t, h.CreatedAt.IsZero(), "the answer is the whole hold: %s", rec.Body.String())
		require.NotNil(t, h.ResolvedAt)
		got := a.mustDo(http.StatusOK, "GET", holds+"h1", ``)
		assert.JSONEq(t, rec.Body.String(), got.Body.String())
		assert.Equal(t, ledger.Balance{Posted: 850, Available: 850}, a.balance("alice"), "the rest is released")
	})

	t.Run("the hold id is the idempotency key", func(t *testing.T) {
		before := a.digest()
		first := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", holdBody("h1", 400, 3600))
		assert.Equal(t, "true", first.Header().Get("Idempotent-Replayed"))
		assert.Equal(t, before, a.digest())
		requireProblem(t, a.do("POST", "/v1/accounts/alice/holds", holdBody("h1", 401, 3600)), 409, "idempotency_key_reused")
		assert.Equal(t, before, a.digest())

		body := `{"currency":"USD","amount":10,"timeout_seconds":60}`
		rec := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", body, "Idempotency-Key", "cart-9")
		assert.Equal(t, "cart-9", decodeHold(t, rec).ID)
		key := "cart#9" // printable, but not an ID
		sum := sha256.Sum256([]byte(key))
		rec = a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", body, "Idempotency-Key", key)
		assert.Equal(t, "k-"+hex.EncodeToString(sum[:16]), decodeHold(t, rec).ID)
		again := a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", body, "Idempotency-Key", key)
		assert.Equal(t, rec.Body.String(), again.Body.String())
		random := decodeHold(t, a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", body))
		assert.Regexp(t, `^h-[A-Za-z0-9]+$`, random.ID)
		for _, id := range []string{"cart-9", decodeHold(t, rec).ID, random.ID} {
			a.mustDo(http.StatusOK, "POST", holds+id+"/void", ``)
		}
		assert.Equal(t, ledger.Balance{Posted: 850, Available: 850}, a.balance("alice"))
	})

	t.Run("capture and void happen at most once", func(t *testing.T) {
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", holdBody("h2", 300, 3600))
		before := a.digest()
		for _, tc := range []struct {
			name, path, body string
			status           int
			code             string
		}{
			{"capture a captured hold", holds + "h1/capture", ``, 409, "hold_not_pending"},
			{"void a captured hold", holds + "h1/void", ``, 409, "hold_not_pending"},
			{"capture above the held amount", holds + "h2/capture", `{"amount":301}`, 422, "amount_exceeds_hold"},
			{"capture zero", holds + "h2/capture", `{"amount":0}`, 400, "invalid_request"},
			{"capture a negative amount", holds + "h2/capture", `{"amount":-1}`, 400, "invalid_request"},
			{"capture a float", holds + "h2/capture", `{"amount":1.5}`, 400, "invalid_request"},
			{"capture with an unknown field", holds + "h2/capture", `{"amount":1,"memo":"x"}`, 400, "invalid_request"},
			{"capture to itself", holds + "h2/capture", `{"to":"alice"}`, 400, "invalid_request"},
			{"capture to an unknown account", holds + "h2/capture", `{"to":"nobody"}`, 404, "account_not_found"},
			{"capture to a malformed account", holds + "h2/capture", `{"to":"a:b"}`, 400, "invalid_request"},
			{"capture a body that is not an object", holds + "h2/capture", `[]`, 400, "invalid_request"},
			{"void with a body", holds + "h2/void", `{"amount":1}`, 400, "invalid_request"},
			{"capture an unknown hold", holds + "nope/capture", ``, 404, "not_found"},
			{"void an unknown hold", holds + "nope/void", ``, 404, "not_found"},
			{"capture a hold of an unknown account", "/v1/accounts/nobody/holds/h2/capture", ``, 404, "not_found"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				requireProblem(t, a.do("POST", tc.path, tc.body), tc.status, tc.code)
				require.Equal(t, before, a.digest(), "nothing changes")
			})
		}
		requireProblem(t, a.do("GET", holds+"nope", ``), 404, "not_found")
		requireProblem(t, a.do("GET", holds+"a:b", ``), 400, "invalid_request")

		h := decodeHold(t, a.mustDo(http.StatusOK, "POST", holds+"h2/void", `{}`))
		assert.Equal(t, "voided", h.Status)
		assert.Equal(t, "voided", decodeHold(t, a.mustDo(http.StatusOK, "GET", holds+"h2", ``)).Status)
		requireProblem(t, a.do("POST", holds+"h2/void", ``), 409, "hold_not_pending")
		requireProblem(t, a.do("POST", holds+"h2/capture", ``), 409, "hold_not_pending")
		assert.Equal(t, ledger.Balance{Posted: 850, Available: 850}, a.balance("alice"))
	})

	t.Run("an empty capture takes the whole hold; a key replays it", func(t *testing.T) {
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", holdBody("h3", 50, 3600))
		key := []string{"Idempotency-Key", "cap-h3"}
		rec := a.mustDo(http.StatusOK, "POST", holds+"h3/capture", ``, key...)
		assert.Equal(t, int64(50), decodeHold(t, rec).Captured)
		again := a.mustDo(http.StatusOK, "POST", holds+"h3/capture", ``, key...)
		assert.Equal(t, rec.Body.String(), again.Body.String())
		assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
		requireProblem(t, a.do("POST", holds+"h3/capture", `{"amount":1}`, key...), 409, "idempotency_key_reused")
		assert.Equal(t, ledger.Balance{Posted: 800, Available: 800}, a.balance("alice"))
	})

	t.Run("capture to another account moves the money", func(t *testing.T) {
		for _, to := range []string{"alice..shop", far} {
			t.Run(to, func(t *testing.T) {
				id := "pay-" + to
				a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", holdBody(id, 100, 3600))
				h := decodeHold(t, a.mustDo(http.StatusOK, "POST", holds+id+"/capture", fmt.Sprintf(`{"amount":60,"to":%q}`, to)))
				assert.Equal(t, to, h.To)
				require.NotEmpty(t, h.TransferID)
				tr := decodeTransfer(t, a.mustDo(http.StatusOK, "GET", "/v1/transfers/"+h.TransferID, ``))
				assert.Equal(t, ledger.Transfer{ID: h.TransferID, From: "alice", To: to, Currency: "USD", Amount: 60,
					Status: "completed", HoldID: id, CreatedAt: tr.CreatedAt, CompletedAt: tr.CompletedAt}, tr)
				assert.Equal(t, ledger.Balance{Posted: 60, Available: 60}, a.balance(to))
			})
		}
		assert.Equal(t, ledger.Balance{Posted: 680, Available: 680}, a.balance("alice"))
	})

	t.Run("refused placements hold nothing; a refused id keeps its refusal", func(t *testing.T) {
		for _, tc := range []struct {
			name, path, body string
			status           int
			code             string
		}{
			{"unknown account", "/v1/accounts/nobody/holds", holdBody("x", 1, 60), 404, "account_not_found"},
			{"insufficient funds", "/v1/accounts/alice/holds", holdBody("x", 681, 60), 422, "insufficient_funds"},
			{"missing timeout", "/v1/accounts/alice/holds", `{"currency":"USD","amount":1}`, 400, "invalid_request"},
			{"zero timeout", "/v1/accounts/alice/holds", holdBody("x", 1, 0), 400, "invalid_request"},
			{"negative timeout", "/v1/accounts/alice/holds", holdBody("x", 1, -5), 400, "invalid_request"},
			{"timeout above 90 days", "/v1/accounts/alice/holds", holdBody("x", 1, 90*24*3600+1), 400, "invalid_request"},
			{"timeout that overflows a duration", "/v1/accounts/alice/holds", holdBody("x", 1, 9223372036854775807), 400, "invalid_request"},
			{"float timeout", "/v1/accounts/alice/holds", `{"currency":"USD","amount":1,"timeout_seconds":1.5}`, 400, "invalid_request"},
			{"string timeout", "/v1/accounts/alice/holds", `{"currency":"USD","amount":1,"timeout_seconds":"60"}`, 400, "invalid_request"},
			{"missing amount", "/v1/accounts/alice/holds", `{"currency":"USD","timeout_seconds":60}`, 400, "invalid_request"},
			{"zero amount", "/v1/accounts/alice/holds", holdBody("x", 0, 60), 400, "invalid_request"},
			{"bad currency", "/v1/accounts/alice/holds", `{"currency":"$","amount":1,"timeout_seconds":60}`, 400, "invalid_request"},
			{"bad hold id", "/v1/accounts/alice/holds", holdBody("x y", 1, 60), 400, "invalid_request"},
			{"unknown field", "/v1/accounts/alice/holds", `{"currency":"USD","amount":1,"timeout_seconds":60,"to":"bob"}`, 400, "invalid_request"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before, lasting := a.digest(), a.lastingDigest()
				first := a.do("POST", tc.path, tc.body)
				requireProblem(t, first, tc.status, tc.code)
				if tc.status == http.StatusBadRequest {
					require.Equal(t, before, a.digest())
					return
				}
				require.Equal(t, lasting, a.lastingDigest(), "only the refusal, kept under the hold id until the idempotency TTL")
				again := a.do("POST", tc.path, tc.body)
				require.Equal(t, first.Body.String(), again.Body.String(), "the same request gets the same refusal")
				require.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
				requireProblem(t, a.do("GET", strings.TrimSuffix(tc.path, "/holds")+"/holds/x", ``), 404, "not_found")
			})
		}
		t.Run("without an id nothing is kept", func(t *testing.T) {
			before := a.digest()
			requireProblem(t, a.do("POST", "/v1/accounts/alice/holds", `{"currency":"USD","amount":681,"timeout_seconds":60}`), 422, "insufficient_funds")
			require.Equal(t, before, a.digest(), "nobody can send a random id again")
		})
	})

	t.Run("an expired hold returns its amount and cannot be captured", func(t *testing.T) {
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", holdBody("brief", 80, 1))
		assert.Equal(t, ledger.Balance{Posted: 680, Held: 80, Available: 600}, a.balance("alice"))
		require.Eventually(t, func() bool {
			return decodeHold(t, a.mustDo(http.StatusOK, "GET", holds+"brief", ``)).Status == "expired"
		}, 10*time.Second, 20*time.Millisecond, "a hold reads expired once its expiry passed, without a sweeper")
		assert.Equal(t, ledger.Balance{Posted: 680, Available: 680}, a.balance("alice"))
		requireProblem(t, a.do("POST", holds+"brief/capture", ``), 409, "hold_not_pending")
		requireProblem(t, a.do("POST", holds+"brief/void", ``), 409, "hold_not_pending")
	})
}
