package handlers

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// The batch response is written by hand (appendJSON): it must be the bytes encoding/json
// writes for it, problems and empty lists included.
func TestBatchResponseJSONIsMarshal(t *testing.T) {
	body := json.RawMessage(`{"operation_id":"a:2","account":{"id":"a","version":2,"balances":{"EUR":{"posted":5}},"metadata":{"k":"v, \"quoted\" [x]"}}}`)
	problem := newProblem(problemSpec{status: http.StatusUnprocessableEntity, code: "insufficient_funds", title: "Insufficient funds"}, "need 7, have 5")
	for _, resp := range []batchResponse{
		{Atomic: true, Results: []batchResult{}},
		{Atomic: true, Results: []batchResult{{Status: 201, Body: body}}},
		{Atomic: false, Results: []batchResult{{Status: 201, Body: body}, {Status: 422, Body: problem}, {Status: 201, Body: body}}},
	} {
		want, err := json.Marshal(resp)
		require.NoError(t, err)
		require.Equal(t, string(want), string(resp.appendJSON(nil)))
	}
}
