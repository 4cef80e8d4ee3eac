package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serverCodes returns every problem code the server can answer with: the code enum of the
// Problem schema in handlers/openapi.json, and the code of every problemSpec literal in
// handlers' Go sources (the error table and the specs outside it, in whatever file they
// are added), so a code added to either place without a client sentinel fails
// TestSentinelForEveryProblemCode. A problemSpec's code missing from the enum fails t.
func serverCodes(t *testing.T) map[string]string {
	t.Helper()
	codes := map[string]string{}
	raw, err := os.ReadFile("../handlers/openapi.json")
	require.NoError(t, err)
	var spec struct {
		Components struct {
			Schemas struct {
				Problem struct {
					Properties struct {
						Code struct {
							Enum []string `json:"enum"`
						} `json:"code"`
					} `json:"properties"`
				} `json:"Problem"`
			} `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(raw, &spec))
	enum := spec.Components.Schemas.Problem.Properties.Code.Enum
	require.NotEmpty(t, enum, "openapi.json: components.schemas.Problem.properties.code.enum moved; update serverCodes")
	documented := map[string]bool{}
	for _, c := range enum {
		codes[c] = "openapi.json"
		documented[c] = true
	}

	files, err := filepath.Glob("../handlers/*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	literals := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			if id, ok := lit.Type.(*ast.Ident); !ok || id.Name != "problemSpec" || len(lit.Elts) == 0 {
				return true // problemSpec{} is the zero value returned with ok false
			}
			literals++
			code, ok := specCode(lit)
			if !ok {
				t.Errorf("%s: cannot read the code of this problemSpec literal (not a string literal); update serverCodes", fset.Position(lit.Pos()))
				return true
			}
			codes[code] = fset.Position(lit.Pos()).String()
			if !documented[code] {
				t.Errorf("%s: code %q is not in openapi.json's Problem.code enum", codes[code], code)
			}
			return true
		})
	}
	require.Greater(t, literals, 10, "handlers no longer spells problems as problemSpec literals; update serverCodes")
	return codes
}

// specCode returns the code of problemSpec{status, code, title} or problemSpec{code: ...}.
func specCode(lit *ast.CompositeLit) (string, bool) {
	var expr ast.Expr
	for i, el := range lit.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok {
			if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "code" {
				expr = kv.Value
			}
		} else if i == 1 {
			expr = el
		}
	}
	bl, ok := expr.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}

// TestSentinelForEveryProblemCode: every code the server answers with has a sentinel that
// an answer with that code matches (and no other sentinel does).
func TestSentinelForEveryProblemCode(t *testing.T) {
	have := map[string]error{}
	for _, s := range sentinels {
		have[s.(*sentinel).code] = s
	}
	codes := serverCodes(t)
	names := make([]string, 0, len(codes))
	for c := range codes {
		names = append(names, c)
	}
	sort.Strings(names)
	t.Logf("server codes: %v", names)
	for _, code := range names {
		s, ok := have[code]
		if !ok {
			t.Errorf("the server answers with code %q (%s) but package client has no sentinel for it: add Err… to errors.go and to sentinels", code, codes[code])
			continue
		}
		e := &Error{Status: 400, Code: code}
		for _, other := range sentinels {
			assert.Equal(t, other == s, errors.Is(e, other), "code %s vs sentinel %v", code, other)
		}
		assert.Equal(t, fmt.Sprintf("tally: 400 %s: Bad", code), (&Error{Status: 400, Code: code, Title: "Bad"}).Error())
	}
	// And no sentinel stands for a code the server no longer answers with.
	for code := range have {
		_, answered := codes[code]
		assert.True(t, answered, "package client has a sentinel for %q, which the server never answers with", code)
	}
}

// TestErrorWithoutProblemBody: an answer without problem+json (a proxy's page) still maps
// by status, and every 503 is ErrUnavailable whatever its code.
func TestErrorWithoutProblemBody(t *testing.T) {
	for status, want := range map[int]error{401: ErrUnauthorized, 403: ErrForbidden, 404: ErrNotFound, 413: ErrPayloadTooLarge, 429: ErrRateLimited, 500: ErrInternal} {
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"text/html"}}}
		e := newError(resp, []byte("<html>{\"code\":\"insufficient_funds\"}</html>"))
		assert.ErrorIs(t, e, want, "%d", status)
		assert.NotErrorIs(t, e, ErrInsufficientFunds)
		assert.Equal(t, http.StatusText(status), e.Title)
	}
	plain := newError(&http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"3"}}}, nil)
	assert.ErrorIs(t, plain, ErrUnavailable)
	assert.Equal(t, 3*time.Second, plain.RetryAfter)
	assert.Equal(t, "tally: 503 service_unavailable: Service Unavailable", plain.Error())
	assert.ErrorIs(t, &Error{Status: 503, Code: "overloaded"}, ErrUnavailable)
	assert.ErrorIs(t, &Error{Status: 503, Code: "overloaded"}, ErrOverloaded)
	assert.NotErrorIs(t, &Error{Status: 409, Code: "version_conflict"}, ErrUnavailable)
}

// TestRetryAfterParsing: seconds and HTTP dates; nonsense and the past are 0.
func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	assert.Equal(t, time.Duration(0), retryAfter("", now))
	assert.Equal(t, time.Second, retryAfter("1", now))
	assert.Equal(t, time.Duration(0), retryAfter("-1", now))
	assert.Equal(t, time.Duration(0), retryAfter("soon", now))
	assert.Equal(t, 24*time.Hour, retryAfter("99999999999999", now), "capped, no overflow")
	assert.Equal(t, 10*time.Second, retryAfter(now.Add(10*time.Second).Format(http.TimeFormat), now))
	assert.Equal(t, time.Duration(0), retryAfter(now.Add(-time.Minute).Format(http.TimeFormat), now))
}
