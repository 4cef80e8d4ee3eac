package handlers_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// TestNewRoutesSpeakJSON sends undecodable bodies to the transfer, hold, close and batch
// routes: each gets 400 problem+json whose detail names JSON, never Go.
func TestNewRoutesSpeakJSON(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(10, "alice", "bob")
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/holds", `{"id":"h","currency":"USD","amount":1,"timeout_seconds":60}`)
	routes := map[string][]string{
		"/v1/transfers": {`{"from":"alice","to":"bob","currency":"USD","amount":"1"}`, `{"from":5,"to":"bob","currency":"USD","amount":1}`,
			`{"from":"alice","to":"bob","currency":"USD","amount":1,"metadata":{"a":1}}`, `{"from":"alice","to":"bob","currency":"USD","amount":1,"metadata":[]}`,
			`{"id":["x"],"from":"alice","to":"bob","currency":"USD","amount":1}`},
		"/v1/accounts/alice/holds": {`{"currency":"USD","amount":1,"timeout_seconds":1.5}`, `{"currency":"USD","amount":1,"timeout_seconds":"60"}`,
			`{"currency":"USD","amount":1,"timeout_seconds":1e3}`, `{"currency":"USD","amount":1,"timeout_seconds":99999999999999999999}`},
		"/v1/accounts/alice/holds/h/capture": {`{"amount":"1"}`, `{"to":5}`, `{"to":null,"amount":{}}`, `"x"`},
		"/v1/accounts/alice/holds/h/void":    {`{"amount":1}`, `[]`, `"void"`},
		"/v1/accounts/bob/close":             {`{"force":true}`, `1`},
		"/v1/batch": {`{"atomic":1,"operations":[]}`, `{"atomic":true,"operations":[{"type":1}]}`,
			`{"atomic":true,"operations":[{"type":"deposit","account":"alice","currency":"USD","amount":true}]}`,
			`{"atomic":true,"operations":[{"type":"hold","account":"alice","currency":"USD","amount":1,"timeout_seconds":"x"}]}`,
			`{"atomic":true,"operations":[{"type":"transfer","from":"alice","to":"bob","currency":"USD","amount":1,"metadata":{"a":[]}}]}`,
			`{"atomic":true,"operations":"all"}`, `{"atomic":true,"operations":[1]}`},
	}
	goish := []string{"json:", "int64", "int", "float", "string", "handlers.", "ledger.", "struct", "map[", "[]", "*", "Go value", "unmarshal"}
	for path, bodies := range routes {
		for _, body := range bodies {
			t.Run(path+" "+body, func(t *testing.T) {
				before := a.digest()
				rec := a.do("POST", path, body)
				requireProblem(t, rec, http.StatusBadRequest, "invalid_request")
				var p handlers.Problem
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
				require.NotEmpty(t, p.Detail)
				for _, w := range goish {
					if w == "string" || w == "int" {
						// "a string" and "an integer" are JSON words; Go's would be bare.
						assert.NotRegexp(t, `(^|[^a ])\b`+w+`\b`, strings.ReplaceAll(strings.ReplaceAll(p.Detail, "a string", ""), "an integer", ""), "detail %q", p.Detail)
						continue
					}
					assert.NotContains(t, p.Detail, w, "detail %q", p.Detail)
				}
				require.Equal(t, before, a.digest())
			})
		}
	}
}
