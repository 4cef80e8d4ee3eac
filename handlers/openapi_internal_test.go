package handlers

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOpenAPIProblemCodes: the Problem schema's code enum is exactly the codes the API
// answers (the error table and the problems written outside it), and its description
// gives each code the status the API answers it with.
func TestOpenAPIProblemCodes(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Enum        []string `json:"enum"`
					Description string   `json:"description"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(openAPI, &doc))
	code := doc.Components.Schemas["Problem"].Properties["code"]

	status := map[string]int{}
	for _, spec := range []problemSpec{specInternal, specNotFound, specTooLarge, specInvalid, specUnauthed,
		specNotAllowed, specForbidden, specRateLimited} {
		status[spec.code] = spec.status
	}
	for _, row := range errorTable {
		status[row.spec.code] = row.spec.status
	}
	var codes []string
	for c := range status {
		codes = append(codes, c)
	}
	assert.ElementsMatch(t, codes, code.Enum, "Problem.code's enum")

	// "a/b/c 409" in the description: every code once, with its status.
	described := map[string]int{}
	for _, m := range regexp.MustCompile(`([a-z_/]+) (\d{3})`).FindAllStringSubmatch(code.Description, -1) {
		n, _ := strconv.Atoi(m[2])
		for _, c := range strings.Split(m[1], "/") {
			_, dup := described[c]
			assert.False(t, dup, "%s is described twice", c)
			described[c] = n
		}
	}
	assert.Equal(t, status, described, "Problem.code's description: code → status")
}
