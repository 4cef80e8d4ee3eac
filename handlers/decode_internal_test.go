package handlers

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestDecodeDetailNested checks the problem details for type errors inside nested objects,
// arrays and maps, as request bodies with operation lists have them: the path is the JSON
// path encoding/json reports, the type is the declared type of the field it names.
func TestDecodeDetailNested(t *testing.T) {
	type op struct {
		Kind   string            `json:"kind"`
		Amount Amount            `json:"amount"`
		Tags   []string          `json:"tags"`
		Limits map[string]int64  `json:"limits"`
		Meta   map[string]string `json:"meta"`
	}
	type body struct {
		Atomic bool  `json:"atomic"`
		Ops    []op  `json:"operations"`
		First  *op   `json:"first"`
		Counts []int `json:"counts"`
	}
	for _, tc := range []struct{ in, want string }{
		{`{"atomic":"yes"}`, `field "atomic" must be a boolean`},
		{`{"operations":{}}`, `field "operations" must be an array of objects`},
		{`{"operations":[1]}`, `field "operations" must be an array of objects`},
		{`{"operations":[{"kind":1}]}`, `field "operations.kind" must be a string`},
		{`{"operations":[{"tags":"a"}]}`, `field "operations.tags" must be an array of strings`},
		{`{"operations":[{"tags":[1]}]}`, `field "operations.tags" must be an array of strings`},
		{`{"operations":[{"limits":{"USD":"1"}}]}`, `field "operations.limits" must be an object of integers`},
		{`{"first":{"meta":{"a":[]}}}`, `field "first.meta" must be an object of strings`},
		{`{"counts":[1.5]}`, `field "counts" must be an array of integers`},
		{`{"operations":[{"amount":"1"}]}`, `field "amount" must be an integer in minor units (no quotes, decimals or exponents)`},
		{`{"operations":[{"memo":"x"}]}`, `unknown field "memo"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var v body
			dec := json.NewDecoder(strings.NewReader(tc.in))
			dec.DisallowUnknownFields()
			err := dec.Decode(&v)
			assert.Equal(t, tc.want, decodeDetail(err, reflect.TypeOf(&v)))
		})
	}
}
