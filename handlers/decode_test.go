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
			rec := a.do("POST", tc.path, tc.body)
			require.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
			require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
			var p handlers.Problem
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p), rec.Body.String())
			assert.Equal(t, "invalid_request", p.Code)
			require.NotEmpty(t, p.Detail)
			if tc.detail != "" {
				assert.Equal(t, tc.detail, p.Detail)
			}
			for _, internal := range []string{"json:", "map[", "[]", "int64", "int", "struct", "*", "Go ", "handlers.", "tally-ledger", "reflect", "interface"} {
				if internal == "int" && strings.Contains(p.Detail, "integer") {
					continue
				}
				assert.NotContains(t, p.Detail, internal, "detail %q shows Go internals", p.Detail)
			}
		})
	}
}
