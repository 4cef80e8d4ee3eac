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

type batchResponse struct {
	Atomic  bool `json:"atomic"`
	Results []struct {
		Status int             `json:"status"`
		Body   json.RawMessage `json:"body"`
	} `json:"results"`
}

func (a *api) mustBatch(body string, headers ...string) batchResponse {
	a.t.Helper()
	rec := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, headers...)
	var resp batchResponse
	require.NoError(a.t, json.Unmarshal(rec.Body.Bytes(), &resp), rec.Body.String())
	return resp
}

// statuses returns the per-operation statuses and, for failures, problem codes.
func (r batchResponse) statuses(t *testing.T) []string {
	t.Helper()
	out := make([]string, len(r.Results))
	for i, res := range r.Results {
		out[i] = fmt.Sprint(res.Status)
		if res.Status >= 400 {
			var p handlers.Problem
			require.NoError(t, json.Unmarshal(res.Body, &p))
			require.Equal(t, res.Status, p.Status)
			out[i] += " " + p.Code
		}
	}
	return out
}

func TestBatchAtomic(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	// Co-located by their placement tag "s1".
	x, y := "s1..x", "s1..y"
	a.mustOpen(0, x, y)

	t.Run("one partition: all operations in one script", func(t *testing.T) {
		resp := a.mustBatch(`{"atomic":true,"operations":[
			{"type":"deposit","account":"s1..x","currency":"USD","amount":1000},
			{"type":"transfer","id":"bt1","from":"s1..x","to":"s1..y","currency":"USD","amount":300,"metadata":{"k":"v"}},
			{"type":"hold","id":"bh1","account":"s1..y","currency":"USD","amount":100,"timeout_seconds":60},
			{"type":"withdrawal","account":"s1..x","currency":"USD","amount":200}]}`)
		assert.True(t, resp.Atomic)
		assert.Equal(t, []string{"201", "201", "201", "201"}, resp.statuses(t))
		var tr ledger.Transfer
		require.NoError(t, json.Unmarshal(resp.Results[1].Body, &tr))
		assert.Equal(t, "completed", tr.Status)
		assert.JSONEq(t, string(resp.Results[1].Body), a.mustDo(http.StatusOK, "GET", "/v1/transfers/bt1", ``).Body.String())
		var h ledger.Hold
		require.NoError(t, json.Unmarshal(resp.Results[2].Body, &h))
		assert.Equal(t, "pending", h.Status)
		assert.Equal(t, ledger.Balance{Posted: 500, Available: 500}, a.balance(x))
		assert.Equal(t, ledger.Balance{Posted: 300, Held: 100, Available: 200}, a.balance(y))
		assert.Equal(t, []string{"AccountOpened", "Deposited", "TransferDebited", "Withdrawn"}, a.eventTypes(x))
	})

	t.Run("a failed operation writes nothing at all", func(t *testing.T) {
		before := a.digest()
		resp := a.mustBatch(`{"atomic":true,"operations":[
			{"type":"deposit","id":"bd1","account":"s1..x","currency":"USD","amount":10},
			{"type":"hold","id":"bh2","account":"s1..y","currency":"USD","amount":1,"timeout_seconds":60},
			{"type":"withdrawal","account":"s1..y","currency":"USD","amount":100000},
			{"type":"deposit","account":"s1..y","currency":"USD","amount":10}]}`)
		assert.Equal(t, []string{"424 batch_aborted", "424 batch_aborted", "422 insufficient_funds", "424 batch_aborted"}, resp.statuses(t))
		require.Equal(t, before, a.digest(), "no operation of a failed atomic batch leaves a trace")
		requireProblem(t, a.do("GET", "/v1/accounts/s1..y/holds/bh2", ``), 404, "not_found")
	})

	t.Run("a failed batch with transfers writes nothing lasting either", func(t *testing.T) {
		before := a.lastingDigest()
		resp := a.mustBatch(`{"atomic":true,"operations":[
			{"type":"deposit","account":"s1..x","currency":"USD","amount":10},
			{"type":"transfer","id":"bt2","from":"s1..x","to":"s1..y","currency":"USD","amount":5},
			{"type":"withdrawal","account":"s1..y","currency":"USD","amount":100000}]}`)
		assert.Equal(t, []string{"424 batch_aborted", "424 batch_aborted", "422 insufficient_funds"}, resp.statuses(t))
		resp = a.mustBatch(`{"atomic":true,"operations":[
			{"type":"deposit","account":"s1..x","currency":"USD","amount":10},
			{"type":"transfer","id":"bt3","from":"s1..x","to":"s1..nobody","currency":"USD","amount":5}]}`)
		assert.Equal(t, []string{"424 batch_aborted", "404 account_not_found"}, resp.statuses(t))
		requireProblem(t, a.do("GET", "/v1/transfers/bt2", ``), 404, "not_found")
		// Only the claims of the transfer IDs remain, expiring: a copy of the batch may still
		// be in flight and make the transfers, so another source must not take the IDs.
		require.Equal(t, before, a.lastingDigest(), "no lasting trace")
		for _, id := range []string{"bt2", "bt3"} {
			keys := a.rdb.Keys(t.Context(), "*transfer-index:"+id).Val()
			require.Len(t, keys, 1)
			assert.Positive(t, a.rdb.PTTL(t.Context(), keys[0]).Val(), "the claim of %s expires", id)
		}
	})

	t.Run("an operation id used before fails the whole atomic batch", func(t *testing.T) {
		before := a.digest()
		requireProblem(t, a.do("POST", "/v1/batch", `{"atomic":true,"operations":[
			{"type":"deposit","account":"s1..x","currency":"USD","amount":1},
			{"type":"transfer","id":"bt1","from":"s1..x","to":"s1..y","currency":"USD","amount":1}]}`), 409, "idempotency_key_reused")
		require.Equal(t, before, a.digest())
	})

	t.Run("accounts in different partitions are refused", func(t *testing.T) {
		far := a.otherPartition(x, "far")
		a.mustOpen(0, far)
		before := a.digest()
		body := fmt.Sprintf(`{"atomic":true,"operations":[
			{"type":"deposit","account":"s1..x","currency":"USD","amount":10},
			{"type":"deposit","account":%q,"currency":"USD","amount":10}]}`, far)
		requireProblem(t, a.do("POST", "/v1/batch", body), 422, "batch_not_atomic")
		body = fmt.Sprintf(`{"atomic":true,"operations":[{"type":"transfer","from":"s1..x","to":%q,"currency":"USD","amount":1}]}`, far)
		requireProblem(t, a.do("POST", "/v1/batch", body), 422, "batch_not_atomic")
		require.Equal(t, before, a.digest())
	})

	t.Run("an Idempotency-Key replays the whole batch", func(t *testing.T) {
		body := `{"atomic":true,"operations":[
			{"type":"deposit","account":"s1..x","currency":"USD","amount":7},
			{"type":"transfer","from":"s1..x","to":"s1..y","currency":"USD","amount":7},
			{"type":"hold","account":"s1..y","currency":"USD","amount":7,"timeout_seconds":60}]}`
		key := []string{"Idempotency-Key", "batch-1"}
		first := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, key...)
		before := a.digest()
		again := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, key...)
		assert.Equal(t, first.Body.String(), again.Body.String(), "byte for byte")
		assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
		require.Equal(t, before, a.digest())
		requireProblem(t, a.do("POST", "/v1/batch", strings.Replace(body, `"amount":7}`, `"amount":8}`, 1), key...), 409, "idempotency_key_reused")
		require.Equal(t, before, a.digest())
	})
}

func TestBatchNotAtomic(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	x := "x"
	y := a.otherPartition(x, "y")
	a.mustOpen(0, x, y)
	ops := fmt.Sprintf(`{"atomic":false,"operations":[
		{"type":"deposit","account":%[1]q,"currency":"USD","amount":100},
		{"type":"withdrawal","account":%[1]q,"currency":"USD","amount":500},
		{"type":"transfer","id":"lt1","from":%[1]q,"to":%[2]q,"currency":"USD","amount":30},
		{"type":"hold","id":"lh1","account":%[1]q,"currency":"USD","amount":20,"timeout_seconds":60},
		{"type":"deposit","account":"nobody","currency":"USD","amount":1},
		{"type":"transfer","from":%[2]q,"to":%[2]q,"currency":"USD","amount":1}]}`, x, y)

	t.Run("each operation has its own result", func(t *testing.T) {
		// Operations of one account (a transfer's source) run in the given order; those of
		// different accounts run concurrently. The last operation is malformed (from = to):
		// the whole batch is refused before anything runs.
		before := a.digest()
		requireProblem(t, a.do("POST", "/v1/batch", ops), 400, "invalid_request")
		require.Equal(t, before, a.digest())

		ops = strings.Replace(ops, fmt.Sprintf(`"to":%q,"currency":"USD","amount":1}`, y), fmt.Sprintf(`"to":%q,"currency":"USD","amount":1000}`, x), 1)
		resp := a.mustBatch(ops)
		assert.False(t, resp.Atomic)
		assert.Equal(t, []string{"201", "422 insufficient_funds", "201", "201", "404 account_not_found", "422 insufficient_funds"}, resp.statuses(t))

		// The results match the final state.
		var dep ledger.OperationResult
		require.NoError(t, json.Unmarshal(resp.Results[0].Body, &dep))
		assert.Equal(t, int64(100), dep.Account.Balances["USD"].Posted)
		assert.Equal(t, ledger.Balance{Posted: 70, Held: 20, Available: 50}, a.balance(x))
		assert.Equal(t, ledger.Balance{Posted: 30, Available: 30}, a.balance(y))
		assert.JSONEq(t, string(resp.Results[2].Body), a.mustDo(http.StatusOK, "GET", "/v1/transfers/lt1", ``).Body.String())
		assert.JSONEq(t, string(resp.Results[3].Body), a.mustDo(http.StatusOK, "GET", "/v1/accounts/"+x+"/holds/lh1", ``).Body.String())
		assert.Equal(t, []string{"AccountOpened", "Deposited", "TransferDebited", "HoldPlaced"}, a.eventTypes(x))
		assert.Equal(t, []string{"AccountOpened", "TransferCredited"}, a.eventTypes(y))
		requireProblem(t, a.do("GET", "/v1/accounts/nobody", ``), 404, "account_not_found")
	})

	t.Run("an Idempotency-Key makes every operation replay", func(t *testing.T) {
		body := fmt.Sprintf(`{"atomic":false,"operations":[
			{"type":"deposit","account":%[1]q,"currency":"USD","amount":5},
			{"type":"transfer","from":%[1]q,"to":%[2]q,"currency":"USD","amount":5},
			{"type":"hold","account":%[2]q,"currency":"USD","amount":5,"timeout_seconds":60},
			{"type":"withdrawal","account":%[2]q,"currency":"USD","amount":1}]}`, x, y)
		key := []string{"Idempotency-Key", "loose-1"}
		first := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, key...)
		before := a.digest()
		again := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, key...)
		assert.JSONEq(t, first.Body.String(), again.Body.String())
		require.Equal(t, before, a.digest(), "a retry applies nothing")
		assert.Equal(t, ledger.Balance{Posted: 70, Held: 20, Available: 50}, a.balance(x))
		assert.Equal(t, ledger.Balance{Posted: 34, Held: 5, Available: 29}, a.balance(y))
	})
}

func TestBatchRefusesMalformedBatches(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(100, "s1..x", "s1..y")
	dep := `{"type":"deposit","account":"s1..x","currency":"USD","amount":1}`
	tooMany := `{"atomic":false,"operations":[` + strings.Repeat(dep+",", ledger.MaxBatchOps) + dep + `]}`
	batch := func(atomic bool, ops ...string) string {
		return fmt.Sprintf(`{"atomic":%v,"operations":[%s]}`, atomic, strings.Join(ops, ","))
	}
	for _, tc := range []struct {
		name, body, detail string
	}{
		{"1001 operations", tooMany, "operations must hold 1..1000 operations"},
		{"no operations", batch(true), "operations must hold 1..1000 operations"},
		{"operations missing", `{"atomic":true}`, "operations must hold 1..1000 operations"},
		{"atomic missing", `{"operations":[` + dep + `]}`, ""},
		{"atomic not a boolean", `{"atomic":"yes","operations":[` + dep + `]}`, `field "atomic" must be a boolean`},
		{"operations not an array", `{"atomic":true,"operations":{}}`, ""},
		{"unknown top-level field", `{"atomic":true,"operations":[` + dep + `],"dry_run":true}`, `unknown field "dry_run"`},
		{"unknown operation field", batch(true, dep, `{"type":"deposit","account":"s1..x","currency":"USD","amount":1,"memo":"x"}`), `unknown field "memo"`},
		{"unknown type", batch(false, dep, `{"type":"refund","account":"s1..x","currency":"USD","amount":1}`), "operations[1]: type must be deposit, withdrawal, transfer, hold, capture or void"},
		{"missing type", batch(false, `{"account":"s1..x","currency":"USD","amount":1}`), ""},
		{"missing amount", batch(false, dep, `{"type":"deposit","account":"s1..x","currency":"USD"}`), "operations[1]: amount is required"},
		{"float amount", batch(false, `{"type":"deposit","account":"s1..x","currency":"USD","amount":1.5}`), ""},
		{"zero amount", batch(false, dep, `{"type":"deposit","account":"s1..x","currency":"USD","amount":0}`), ""},
		{"bad currency", batch(false, dep, dep, `{"type":"deposit","account":"s1..x","currency":"usd","amount":1}`), ""},
		{"deposit without account", batch(false, `{"type":"deposit","currency":"USD","amount":1}`), "operations[0]: account is required for a deposit"},
		{"deposit with metadata", batch(false, `{"type":"deposit","account":"s1..x","currency":"USD","amount":1,"metadata":{}}`), "operations[0]: metadata does not apply to a deposit"},
		{"deposit with to", batch(false, `{"type":"deposit","account":"s1..x","to":"s1..y","currency":"USD","amount":1}`), "operations[0]: to does not apply to a deposit"},
		{"transfer with account", batch(false, `{"type":"transfer","account":"s1..x","from":"s1..x","to":"s1..y","currency":"USD","amount":1}`), "operations[0]: account does not apply to a transfer"},
		{"transfer without to", batch(false, `{"type":"transfer","from":"s1..x","currency":"USD","amount":1}`), "operations[0]: to is required for a transfer"},
		{"transfer to itself", batch(false, `{"type":"transfer","from":"s1..x","to":"s1..x","currency":"USD","amount":1}`), ""},
		{"transfer with timeout", batch(false, `{"type":"transfer","from":"s1..x","to":"s1..y","currency":"USD","amount":1,"timeout_seconds":5}`), "operations[0]: timeout_seconds does not apply to a transfer"},
		{"hold without timeout", batch(false, `{"type":"hold","account":"s1..x","currency":"USD","amount":1}`), "operations[0]: timeout_seconds is required for a hold"},
		{"hold with huge timeout", batch(false, `{"type":"hold","account":"s1..x","currency":"USD","amount":1,"timeout_seconds":9223372036854775807}`), "operations[0]: timeout_seconds must be 1..7776000"},
		{"hold with bad id", batch(false, `{"type":"hold","id":"a b","account":"s1..x","currency":"USD","amount":1,"timeout_seconds":5}`), ""},
		{"repeated id", batch(true, `{"type":"deposit","id":"d1","account":"s1..x","currency":"USD","amount":1}`,
			`{"type":"deposit","id":"d1","account":"s1..x","currency":"USD","amount":1}`), "operations[1]: id repeats the id of operations[0]; ids must be unique within a batch"},
		{"capture without hold", batch(false, `{"type":"capture","account":"s1..x"}`), "operations[0]: hold is required for a capture"},
		{"capture with currency", batch(false, `{"type":"capture","account":"s1..x","hold":"h","currency":"USD"}`), "operations[0]: currency does not apply to a capture"},
		{"capture of zero", batch(false, `{"type":"capture","account":"s1..x","hold":"h","amount":0}`), "operations[0]: amount must be a positive integer in minor units; leave it out to capture the whole hold"},
		{"capture with timeout", batch(false, `{"type":"capture","account":"s1..x","hold":"h","timeout_seconds":5}`), "operations[0]: timeout_seconds does not apply to a capture"},
		{"void with amount", batch(false, `{"type":"void","account":"s1..x","hold":"h","amount":5}`), "operations[0]: amount does not apply to a void"},
		{"void with to", batch(false, `{"type":"void","account":"s1..x","hold":"h","to":"s1..y"}`), "operations[0]: to does not apply to a void"},
		{"hold named on a deposit", batch(false, `{"type":"deposit","account":"s1..x","hold":"h","currency":"USD","amount":1}`), "operations[0]: hold does not apply to a deposit"},
		{"one hold twice", batch(true, `{"type":"capture","account":"s1..x","hold":"h"}`, `{"type":"void","account":"s1..x","hold":"h"}`), ""},
		{"malformed JSON", `{"atomic":true,"operations":[`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := a.digest()
			rec := a.do("POST", "/v1/batch", tc.body)
			requireProblem(t, rec, http.StatusBadRequest, "invalid_request")
			var p handlers.Problem
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
			if tc.detail != "" {
				assert.Equal(t, tc.detail, p.Detail)
			}
			require.Equal(t, before, a.digest(), "a malformed batch writes nothing")
		})
	}
	t.Run("an operation id equal to the batch's key", func(t *testing.T) {
		before := a.digest()
		requireProblem(t, a.do("POST", "/v1/batch", batch(true, `{"type":"deposit","id":"k1","account":"s1..x","currency":"USD","amount":1}`),
			"Idempotency-Key", "k1"), http.StatusBadRequest, "invalid_request")
		requireProblem(t, a.do("POST", "/v1/batch", batch(true, dep), "Idempotency-Key", "has spaces"), http.StatusBadRequest, "invalid_request")
		require.Equal(t, before, a.digest())
	})
}

// TestBatchHoldActions captures and voids a list of holds in one request: atomic, all or
// nothing within one partition; not atomic, one result per hold.
func TestBatchHoldActions(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	x, y := "s1..x", "s1..y"
	a.mustOpen(1000, x, y)
	for _, h := range []string{"h1", "h2", "h3", "h4"} {
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts/s1..x/holds", `{"id":"`+h+`","currency":"USD","amount":100,"timeout_seconds":60}`)
	}

	t.Run("atomic: one refusal changes nothing", func(t *testing.T) {
		before := a.digest()
		resp := a.mustBatch(`{"atomic":true,"operations":[
			{"type":"capture","account":"s1..x","hold":"h1","amount":40},
			{"type":"void","account":"s1..x","hold":"h2"},
			{"type":"capture","account":"s1..x","hold":"h3","amount":101}]}`)
		assert.Equal(t, []string{"424 batch_aborted", "424 batch_aborted", "422 amount_exceeds_hold"}, resp.statuses(t))
		require.Equal(t, before, a.digest())
	})

	t.Run("atomic: all at once", func(t *testing.T) {
		body := `{"atomic":true,"operations":[
			{"type":"capture","account":"s1..x","hold":"h1","amount":40},
			{"type":"void","account":"s1..x","hold":"h2"},
			{"type":"capture","account":"s1..x","hold":"h3","to":"s1..y"}]}`
		first := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, "Idempotency-Key", "bulk-1")
		var resp batchResponse
		require.NoError(t, json.Unmarshal(first.Body.Bytes(), &resp))
		assert.Equal(t, []string{"200", "200", "200"}, resp.statuses(t))
		before := a.digest()
		again := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, "Idempotency-Key", "bulk-1")
		assert.JSONEq(t, first.Body.String(), again.Body.String())
		assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
		require.Equal(t, before, a.digest(), "a retry applies nothing")
		assert.Equal(t, ledger.Balance{Posted: 1000 - 40 - 100, Held: 100, Available: 1000 - 40 - 100 - 100}, a.balance(x))
		assert.Equal(t, ledger.Balance{Posted: 1100, Available: 1100}, a.balance(y))
	})

	t.Run("not atomic: a result per hold", func(t *testing.T) {
		resp := a.mustBatch(`{"atomic":false,"operations":[
			{"type":"void","account":"s1..x","hold":"h1"},
			{"type":"void","account":"s1..x","hold":"h4"},
			{"type":"capture","account":"s1..x","hold":"nope"}]}`)
		assert.Equal(t, []string{"409 hold_not_pending", "200", "404 not_found"}, resp.statuses(t))
		assert.Equal(t, ledger.Balance{Posted: 860, Available: 860}, a.balance(x))
	})

	t.Run("not atomic with a key: a retry replays every result", func(t *testing.T) {
		for _, h := range []string{"h5", "h6"} {
			a.mustDo(http.StatusCreated, "POST", "/v1/accounts/s1..y/holds", `{"id":"`+h+`","currency":"USD","amount":10,"timeout_seconds":60}`)
		}
		body := `{"atomic":false,"operations":[
			{"type":"capture","account":"s1..y","hold":"h5","amount":4},
			{"type":"void","account":"s1..y","hold":"h6"}]}`
		first := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, "Idempotency-Key", "bulk-2")
		var resp batchResponse
		require.NoError(t, json.Unmarshal(first.Body.Bytes(), &resp))
		assert.Equal(t, []string{"200", "200"}, resp.statuses(t))
		before := a.digest()
		again := a.mustDo(http.StatusOK, "POST", "/v1/batch", body, "Idempotency-Key", "bulk-2")
		assert.JSONEq(t, first.Body.String(), again.Body.String(), "200s again, not 409 hold_not_pending")
		require.Equal(t, before, a.digest(), "a retry applies nothing")
	})
}
