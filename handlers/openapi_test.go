package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// spec is /openapi.json as the API serves it, loaded and validated by kin-openapi, with a
// router that finds the operation of a request.
type spec struct {
	doc    *openapi3.T
	router routers.Router
	raw    []byte
}

// loadSpec returns the served document, loaded once per test binary. A document the
// validator rejects fails every test that uses it.
var loadSpec = sync.OnceValues(func() (*spec, error) {
	h, err := handlers.New(nil, handlers.Config{}) // /openapi.json needs no ledger
	if err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != http.StatusOK {
		return nil, errors.New("GET /openapi.json: " + rec.Result().Status)
	}
	doc, err := openapi3.NewLoader().LoadFromData(rec.Body.Bytes())
	if err != nil {
		return nil, err
	}
	// Every check kin-openapi has, reported at once. It picks the JSON Schema 2020-12
	// rules itself for an OpenAPI 3.1 document.
	if err := doc.Validate(context.Background(), openapi3.EnableMultiError(),
		openapi3.EnableSchemaPatternValidation(), openapi3.EnableSchemaDefaultsValidation(),
		openapi3.EnableExamplesValidation(), openapi3.EnableSchemaFormatValidation()); err != nil {
		return nil, err
	}
	// The router matches requests by path only: tests send them to httptest's example.com,
	// not to the document's server.
	routed := *doc
	routed.Servers = nil
	router, err := legacy.NewRouter(&routed)
	if err != nil {
		return nil, err
	}
	return &spec{doc: doc, router: router, raw: rec.Body.Bytes()}, nil
})

func init() {
	// The console's page and assets and the OpenMetrics exposition are text: their
	// schemas are strings.
	for _, ct := range []string{"text/html", "text/css", "text/javascript", "application/openmetrics-text"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
	}
}

func mustSpec(t testing.TB) *spec {
	t.Helper()
	s, err := loadSpec()
	require.NoError(t, err, "openapi.json does not pass kin-openapi's validator")
	return s
}

var camelCase = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)

// TestOpenAPIValid: the served document passes kin-openapi's validator (OpenAPI 3.1, JSON
// Schema 2020-12), names a server, and gives every operation a unique camelCase
// operationId and the responses every operation can give: 413 everywhere (the body limit
// is checked before routing), 401/403/429/500/503 on every /v1 operation.
func TestOpenAPIValid(t *testing.T) {
	s := mustSpec(t)
	assert.Equal(t, "3.1.0", s.doc.OpenAPI)
	require.NotEmpty(t, s.doc.Servers, "servers")
	_, err := s.doc.Servers[0].BasePath()
	require.NoError(t, err)

	ids := map[string]string{}
	for path, item := range s.doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			if assert.Regexp(t, camelCase, op.OperationID, "%s: operationId", where) {
				if other, dup := ids[op.OperationID]; dup {
					t.Errorf("operationId %s of %s repeats %s's", op.OperationID, where, other)
				}
				ids[op.OperationID] = where
			}
			assert.NotEmpty(t, op.Summary, "%s: summary", where)
			want := []int{413}
			if strings.HasPrefix(path, "/v1/") {
				want = append(want, 401, 403, 429, 500, 503)
			}
			for _, status := range want {
				assert.NotNil(t, op.Responses.Status(status), "%s documents no %d", where, status)
			}
			for code, r := range op.Responses.Map() {
				if code >= "400" {
					assert.NotNil(t, r.Value.Content.Get("application/problem+json"), "%s %s: errors are problem+json", where, code)
				}
			}
		}
	}
}

// TestOpenAPICoversEveryRoute: every route gin serves has an operation in openapi.json and
// every operation is served, so a route added without a spec entry fails here.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	s := mustSpec(t)
	h, err := handlers.New(nil, handlers.Config{Relay: relayStatus{}, Metrics: http.NotFoundHandler()})
	require.NoError(t, err)
	served := map[string]bool{}
	for _, r := range h.(interface{ Routes() gin.RoutesInfo }).Routes() {
		path := regexp.MustCompile(`[:*](\w+)`).ReplaceAllString(r.Path, "{$1}")
		served[r.Method+" "+path] = true
		// The kin-openapi router, which response validation uses, finds the same operation.
		req := httptest.NewRequest(r.Method, regexp.MustCompile(`\{\w+\}`).ReplaceAllString(path, "x"), nil)
		route, _, err := s.router.FindRoute(req)
		if assert.NoError(t, err, "route %s %s has no operation in openapi.json", r.Method, r.Path) {
			assert.Equal(t, path, route.Path, "%s %s", r.Method, r.Path)
		}
	}
	require.NotEmpty(t, served)
	for path, item := range s.doc.Paths.Map() {
		for method := range item.Operations() {
			assert.True(t, served[method+" "+path], "openapi.json describes %s %s, which the API does not serve", method, path)
		}
	}
}

// checkResponse validates one response of the API against openapi.json and fails t when
// it does not match: the status must be documented for the operation, the content type
// and body must match its schema, required headers must be there. A request no operation
// matches must be answered with the not_found or method_not_allowed problem. Every
// response carries X-Request-ID, and a problem's status is the response's.
func checkResponse(t testing.TB, req *http.Request, status int, header http.Header, body []byte) {
	t.Helper()
	s := mustSpec(t)
	where := req.Method + " " + req.URL.Path
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s → %d does not match openapi.json: %s\nbody: %.300s", where, status, fmt.Sprintf(format, args...), body)
	}
	if header.Get("X-Request-ID") == "" {
		fail("no X-Request-ID")
	}
	if strings.HasPrefix(header.Get("Content-Type"), "application/problem+json") {
		var p handlers.Problem
		if err := json.Unmarshal(body, &p); err != nil || p.Status != status {
			fail("a problem's status must be the response's (%v)", err)
		}
	}
	// kin-openapi's router forgives a trailing slash that gin answers 404, and cannot tell
	// a 405 on a templated path; a request is routed here when gin would route it.
	route, params, err := s.router.FindRoute(req)
	if err == nil && !templateRegexp(route.Path).MatchString(req.URL.Path) {
		route, err = nil, errors.New("path not served")
	}
	if err != nil {
		want := http.StatusNotFound
		for path, item := range s.doc.Paths.Map() {
			if templateRegexp(path).MatchString(req.URL.Path) && item.GetOperation(req.Method) == nil {
				want = http.StatusMethodNotAllowed
			}
		}
		if status != want {
			fail("no operation matches (%v), so the answer must be %d", err, want)
			return
		}
		problem := s.doc.Components.Schemas["Problem"].Value
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			fail("body: %v", err)
		} else if err := problem.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			fail("not a Problem: %v", err)
		}
		return
	}
	where = req.Method + " " + route.Path + " (" + req.URL.Path + ")"
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		fail("%v", err)
	}
}

// templateRegexp matches the paths an OpenAPI path template names, as gin routes them
// ({id} is one non-empty segment).
func templateRegexp(path string) *regexp.Regexp {
	return regexp.MustCompile("^" + regexp.MustCompile(`\\\{\w+\\\}`).ReplaceAllString(regexp.QuoteMeta(path), "[^/]+") + "$")
}

// validating wraps h so that every response it writes is checked with checkResponse.
func validating(t testing.TB, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &teeWriter{ResponseWriter: w}
		h.ServeHTTP(tw, r)
		if tw.status == 0 && r.Context().Err() != nil {
			return // the client went away and nothing was answered
		}
		if tw.status == 0 {
			tw.status = http.StatusOK
		}
		checkResponse(t, r, tw.status, w.Header(), tw.body.Bytes())
	})
}

// teeWriter passes a response through and keeps its status and body.
type teeWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (w *teeWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *teeWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.body.Write(b)
	return w.ResponseWriter.Write(b)
}

func (w *teeWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// documentedStatuses returns every operation's documented statuses, keyed by operationId.
func documentedStatuses(s *spec) map[string][]int {
	out := map[string][]int{}
	for _, item := range s.doc.Paths.Map() {
		for _, op := range item.Operations() {
			for code := range op.Responses.Map() {
				n, err := strconv.Atoi(code)
				if err != nil {
					panic("openapi.json: response " + code + " of " + op.OperationID)
				}
				out[op.OperationID] = append(out[op.OperationID], n)
			}
			sort.Ints(out[op.OperationID])
		}
	}
	return out
}
