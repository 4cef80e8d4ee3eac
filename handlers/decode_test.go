package handlers_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// TestProblemDetailsSpeakJSON sends bodies that fail to decode to every POST route and
// checks that each gets 400 application/problem+json whose detail names JSON types and the
// offending field, never Go: no encoding/json prefix, Go type syntax, Go type names or
// package paths.
func TestProblemDetailsSpeakJSON(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts", `{"id":"alice"}`)
	const (
		open     = "/v1/accounts"
		deposit  = "/v1/accounts/alice/deposits"
		withdraw = "/v1/accounts/alice/withdrawals"
	)
	for _, tc := range []struct {
		name, path, body string
		detail           string // the whole detail, when the test pins it
	}{
		{"unknown field", deposit, `{"currency":"USD","amount":1,"memo":"x"}`, `unknown field "memo"`},
		{"unknown field on open", open, `{"id":"bob","memo":"x"}`, `unknown field "memo"`},
		{"metadata string", open, `{"id":"bob","metadata":"x"}`, `field "metadata" must be an object of strings`},
		{"metadata array", open, `{"id":"bob","metadata":["x"]}`, `field "metadata" must be an object of strings`},
		{"metadata number value", open, `{"id":"bob","metadata":{"plan":1}}`, `field "metadata" must be an object of strings`},
		{"metadata object value", open, `{"id":"bob","metadata":{"plan":{"a":"b"}}}`, `field "metadata" must be an object of strings`},
		{"id number", open, `{"id":7}`, `field "id" must be a string`},
		{"id array", open, `{"id":["bob"]}`, `field "id" must be a string`},
		{"id object", open, `{"id":{"x":"y"}}`, `field "id" must be a string`},
		{"allow_negative string", open, `{"id":"bob","allow_negative":"yes"}`, `field "allow_negative" must be a boolean`},
		{"allow_negative number", open, `{"id":"bob","allow_negative":1}`, `field "allow_negative" must be a boolean`},
		{"currency number", deposit, `{"currency":840,"amount":1}`, `field "currency" must be a string`},
		{"currency bool", withdraw, `{"currency":true,"amount":1}`, `field "currency" must be a string`},
		{"amount string", deposit, `{"currency":"USD","amount":"10"}`, ""},
		{"amount float", deposit, `{"currency":"USD","amount":1.5}`, ""},
		{"amount exponent", deposit, `{"currency":"USD","amount":1e3}`, ""},
		{"amount bool", deposit, `{"currency":"USD","amount":true}`, ""},
		{"amount array", deposit, `{"currency":"USD","amount":[1]}`, ""},
		{"amount object", deposit, `{"currency":"USD","amount":{"value":1}}`, ""},
		{"amount null", deposit, `{"currency":"USD","amount":null}`, ""},
		{"amount beyond int64", deposit, `{"currency":"USD","amount":9223372036854775808}`, ""},
		{"amount far beyond int64", withdraw, `{"currency":"USD","amount":-99999999999999999999999}`, ""},
		{"body array", deposit, `[{"currency":"USD","amount":1}]`, "request body must be a JSON object"},
		{"body string", open, `"bob"`, "request body must be a JSON object"},
		{"body number", open, `42`, "request body must be a JSON object"},
		{"body bool", open, `true`, "request body must be a JSON object"},
		{"empty body", open, ``, "request body must be a JSON object"},
		{"truncated", deposit, `{"currency":"USD","amount":`, "malformed JSON: unexpected end of input"},
		{"not JSON", deposit, `currency=USD&amount=1`, ""},
		{"bad escape", open, `{"id":"\q"}`, ""},
		{"trailing object", deposit, `{"currency":"USD","amount":1}{}`, "unexpected data after the JSON object"},
		{"trailing garbage", deposit, `{"currency":"USD","amount":1} x`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := requireJSONDetail(t, a.do("POST", tc.path, tc.body))
			if tc.detail != "" {
				assert.Equal(t, tc.detail, p.Detail)
			}
		})
	}
}

// TestNewRoutesSpeakJSON sends undecodable bodies to the transfer, hold, close and batch
// routes: each gets 400 problem+json whose detail names JSON, never Go, and nothing is
// written.
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
	for path, bodies := range routes {
		for _, body := range bodies {
			t.Run(path+" "+body, func(t *testing.T) {
				before := a.digest()
				requireJSONDetail(t, a.do("POST", path, body))
				require.Equal(t, before, a.digest())
			})
		}
	}
}

// requireJSONDetail requires a 400 invalid_request problem whose detail is not empty and
// names JSON, never Go: no encoding/json prefix, Go type syntax, Go type names or package
// paths. It returns the problem.
func requireJSONDetail(t *testing.T, rec *httptest.ResponseRecorder) handlers.Problem {
	t.Helper()
	requireProblem(t, rec, http.StatusBadRequest, "invalid_request")
	var p handlers.Problem
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p), rec.Body.String())
	require.NotEmpty(t, p.Detail)
	// "a string" and "an integer" are JSON words; Go's would be bare.
	jsonWords := strings.NewReplacer("a string", "", "an integer", "").Replace(p.Detail)
	assert.NotRegexp(t, `\b(string|int)\b`, jsonWords, "detail %q shows Go internals", p.Detail)
	for _, w := range []string{"json:", "map[", "[]", "int64", "float", "struct", "*", "Go ", "handlers.", "ledger.",
		"tally-ledger", "reflect", "interface", "unmarshal"} {
		assert.NotContains(t, p.Detail, w, "detail %q shows Go internals", p.Detail)
	}
	return p
}
