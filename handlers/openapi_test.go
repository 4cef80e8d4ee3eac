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
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
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

	tags := map[string]bool{}
	for _, tag := range s.doc.Tags {
		tags[tag.Name] = true
	}
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
			// docs/api.md groups operations by their one tag, in the document's tag order.
			if assert.Len(t, op.Tags, 1, "%s: tags", where) {
				assert.True(t, tags[op.Tags[0]], "%s: tag %q is not in the document's tags", where, op.Tags[0])
			}
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
	// The verdict depends only on the operation, the status, the headers and the body, so
	// a response seen before is not validated again: kin-openapi compiles the schema on
	// every call, and many tests repeat answers (replays, the same problem).
	h := header.Clone()
	h.Del("X-Request-ID") // new on every request; checked above
	key := fmt.Sprintf("%s %s %d %q %s", req.Method, route.Path, status, h, body)
	verdict, seen := verdicts.Load(key)
	if !seen {
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
			Status:                 status,
			Header:                 header,
			Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		}
		in.SetBodyBytes(body)
		verdict = ""
		if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
			verdict = err.Error()
		}
		if cached.Add(1) <= maxVerdicts {
			verdicts.Store(key, verdict)
		}
	}
	if verdict != "" {
		fail("%s", verdict)
	}
}

// verdicts caches checkResponse's verdicts by response, up to maxVerdicts of them (a long
// fuzzing run sends millions of requests).
var (
	verdicts sync.Map
	cached   atomic.Int64
)

const maxVerdicts = 50_000

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
		if tw.body.Len() == 0 && r.Context().Err() != nil {
			// The client went away: the API wrote no answer (writeError), only gin's bare
			// 200 header, which nobody reads.
			return
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

// walkCall is one request of TestOpenAPIWalk.
type walkCall struct {
	method, path, body string
	headers            []string
}

// TestOpenAPIWalk walks every operation of openapi.json on real Redis: its success and
// every error status it documents, each response validated against the document. 401,
// 403, 413, 429, 500 and 503 come from sending the operation's successful request
// without a key, with a key lacking its scope, with a body over the limit, to a
// rate-limited server, to a server whose ledger and relay panic, and to one whose Redis is
// down. A status documented without a request here fails the test, so coverage does not
// depend on the other tests.
func TestOpenAPIWalk(t *testing.T) {
	s := mustSpec(t)
	const maxBody = 512
	tokens := map[string]string{"root": "root-token-0123456789", "reader": "reader-token-0123456789",
		"writer": "writer-token-0123456789", "tenant": "tenant-token-0123456789"}
	keys := mustKeys(t,
		key("root", tokens["root"], "", handlers.ScopeRead, handlers.ScopeWrite, handlers.ScopeAdmin),
		key("reader", tokens["reader"], "", handlers.ScopeRead),
		key("writer", tokens["writer"], "", handlers.ScopeWrite),
		key("tenant", tokens["tenant"], "ten-", handlers.ScopeRead, handlers.ScopeWrite))
	metrics := promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{})

	rdb := redistest.MustStart(t).Client()
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{})
	require.NoError(t, err)
	primary := newAPI(t, rdb, ledger.Config{}, handlers.Config{Keys: keys, Relay: relayStatus{admin}, Metrics: metrics, MaxBodyBytes: maxBody})
	frozen := time.Unix(1_700_000_000, 0)
	limited := newAPI(t, rdb, ledger.Config{}, handlers.Config{Keys: keys, Relay: relayStatus{admin}, Metrics: metrics,
		RateLimit: handlers.RateLimit{PerSecond: 1, Burst: 1}, Clock: func() time.Time { return frozen }})
	broken, err := handlers.New(panicking{}, handlers.Config{InsecureAdmin: true, Relay: panicking{}, Metrics: metrics})
	require.NoError(t, err)
	downSrv := redistest.MustStart(t)
	// A client that gives up at once: the answer is the same 503, sooner.
	downRDB := redis.NewClient(&redis.Options{Addr: downSrv.Addr(), MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	t.Cleanup(func() { downRDB.Close() })
	downAdmin, err := outbox.NewAdmin(downRDB, outbox.AdminConfig{})
	require.NoError(t, err)
	down := newAPI(t, downRDB, ledger.Config{MaxRetries: 1}, handlers.Config{InsecureAdmin: true, Relay: storeRelay{relayStatus{downAdmin}}, Metrics: metrics})
	downSrv.Kill()

	send := func(t *testing.T, h http.Handler, token string, c walkCall) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for i := 0; i+1 < len(c.headers); i += 2 {
			req.Header.Set(c.headers[i], c.headers[i+1])
		}
		rec := httptest.NewRecorder()
		validating(t, h).ServeHTTP(rec, req)
		return rec
	}
	setup := func(c walkCall) {
		t.Helper()
		rec := send(t, primary.h, tokens["root"], c)
		require.Less(t, rec.Code, 300, "setup %s %s: %s", c.method, c.path, rec.Body.String())
	}
	other := primary.otherPartition("alice", "far")
	for _, id := range []string{"alice", "bob", "shut", "empty", "full", other} {
		setup(walkCall{"POST", "/v1/accounts", fmt.Sprintf(`{"id":%q}`, id), nil})
	}
	setup(walkCall{"POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":1000}`, nil})
	setup(walkCall{"POST", "/v1/accounts/full/deposits", `{"currency":"USD","amount":9223372036854775000}`, nil})
	setup(walkCall{"POST", "/v1/accounts/shut/close", ``, nil})
	for _, h := range []string{"h-pend", "h-void", "h-done"} {
		setup(walkCall{"POST", "/v1/accounts/alice/holds", fmt.Sprintf(`{"id":%q,"currency":"USD","amount":10,"timeout_seconds":3600}`, h), nil})
	}
	setup(walkCall{"POST", "/v1/accounts/alice/holds/h-done/void", ``, nil})
	setup(walkCall{"POST", "/v1/transfers", `{"id":"t1","from":"alice","to":"bob","currency":"USD","amount":1}`, nil})
	setup(walkCall{"POST", "/v1/transfers", `{"id":"t-md","from":"alice","to":"bob","currency":"USD","amount":1,"metadata":{"order_id":"7"}}`, nil})
	setup(walkCall{"POST", "/v1/accounts", `{"id":"md-acct","metadata":{"customer":"42"}}`, nil})
	batch := func(atomic bool, ops ...string) string {
		return fmt.Sprintf(`{"atomic":%v,"operations":[%s]}`, atomic, strings.Join(ops, ","))
	}
	dep := func(account string) string {
		return fmt.Sprintf(`{"type":"deposit","account":%q,"currency":"USD","amount":1}`, account)
	}
	setup(walkCall{"POST", "/v1/batch", batch(true, dep("alice")), []string{"Idempotency-Key", "batch-1"}})
	setup(walkCall{"POST", "/v1/accounts/alice/alerts", `{"id":"al-1","currency":"USD","below":0}`, nil})
	for i := range ledger.MaxAlerts {
		setup(walkCall{"POST", "/v1/accounts/full/alerts", fmt.Sprintf(`{"id":"a%d","currency":"USD","above":%d}`, i, i), nil})
	}
	limits := []string{}
	for i := range ledger.MaxOverdraftLimits {
		limits = append(limits, fmt.Sprintf(`"C%02d":1`, i))
	}
	setup(walkCall{"PATCH", "/v1/accounts/full", `{"overdraft_limit":{` + strings.Join(limits, ",") + `}}`, nil})

	get := func(path string) walkCall { return walkCall{"GET", path, "", nil} }
	post := func(path, body string, headers ...string) walkCall { return walkCall{"POST", path, body, headers} }
	// ok is each operation's successful request; its status is the one 2xx it documents.
	ok := map[string]walkCall{
		"openAccount":             post("/v1/accounts", `{"id":"carol"}`),
		"getAccount":              get("/v1/accounts/alice"),
		"listAccountEvents":       get("/v1/accounts/alice/events?limit=2"),
		"getPastBalances":         get("/v1/accounts/alice/balances?at_version=2"),
		"deposit":                 post("/v1/accounts/alice/deposits", `{"currency":"USD","amount":5}`),
		"withdraw":                post("/v1/accounts/alice/withdrawals", `{"currency":"USD","amount":5}`),
		"closeAccount":            post("/v1/accounts/empty/close", `{}`),
		"placeHold":               post("/v1/accounts/alice/holds", `{"currency":"USD","amount":1,"timeout_seconds":60}`),
		"listHolds":               get("/v1/accounts/alice/holds"),
		"getHold":                 get("/v1/accounts/alice/holds/h-pend"),
		"captureHold":             post("/v1/accounts/alice/holds/h-pend/capture", `{"amount":4,"to":"bob"}`),
		"voidHold":                post("/v1/accounts/alice/holds/h-void/void", ``),
		"createTransfer":          post("/v1/transfers", `{"from":"alice","to":"bob","currency":"USD","amount":2}`),
		"getTransfer":             get("/v1/transfers/t1"),
		"runBatch":                post("/v1/batch", batch(true, dep("alice"), `{"type":"withdrawal","account":"alice","currency":"USD","amount":100000}`)),
		"getRelayStatus":          get("/v1/relay"),
		"replayDeadLetters":       post("/v1/relay/dead-letters/replay", ``),
		"checkLiveness":           get("/healthz"),
		"checkReadiness":          get("/readyz"),
		"getMetrics":              get("/metrics"),
		"getOpenAPI":              get("/openapi.json"),
		"getConsole":              get("/console"),
		"getConsoleAsset":         get("/console/console.js"),
		"updateAccount":           {"PATCH", "/v1/accounts/alice", `{"overdraft_limit":{"USD":100}}`, nil},
		"createAlert":             post("/v1/accounts/alice/alerts", `{"currency":"USD","above":5000}`),
		"listAlerts":              get("/v1/accounts/alice/alerts"),
		"deleteAlert":             {"DELETE", "/v1/accounts/alice/alerts/al-1", "", nil},
		"listTransfersByMetadata": get("/v1/transfers?metadata.order_id=7&limit=1"),
		"listAccountsByMetadata":  get("/v1/accounts?metadata.customer=42"),
	}
	// errs are the operation-specific errors, sent with the root key to main.
	errs := map[string]map[int]walkCall{
		"openAccount":       {400: post("/v1/accounts", `{}`), 409: post("/v1/accounts", `{"id":"alice"}`)},
		"getAccount":        {400: get("/v1/accounts/a:b"), 404: get("/v1/accounts/nobody")},
		"listAccountEvents": {400: get("/v1/accounts/alice/events?limit=0"), 404: get("/v1/accounts/nobody/events")},
		"getPastBalances":   {400: get("/v1/accounts/alice/balances?at_version=0"), 404: get("/v1/accounts/alice/balances?at_version=999")},
		"deposit": {400: post("/v1/accounts/alice/deposits", `{"currency":"USD"}`), 404: post("/v1/accounts/nobody/deposits", `{"currency":"USD","amount":1}`),
			409: post("/v1/accounts/shut/deposits", `{"currency":"USD","amount":1}`), 422: post("/v1/accounts/full/deposits", `{"currency":"USD","amount":9999}`)},
		"withdraw": {400: post("/v1/accounts/alice/withdrawals", `{"amount":1}`), 404: post("/v1/accounts/nobody/withdrawals", `{"currency":"USD","amount":1}`),
			409: post("/v1/accounts/shut/withdrawals", `{"currency":"USD","amount":1}`), 422: post("/v1/accounts/bob/withdrawals", `{"currency":"USD","amount":1000}`)},
		"closeAccount": {400: post("/v1/accounts/bob/close", `[`), 404: post("/v1/accounts/nobody/close", ``), 409: post("/v1/accounts/alice/close", ``)},
		"placeHold": {400: post("/v1/accounts/alice/holds", `{"currency":"USD","amount":1}`),
			404: post("/v1/accounts/nobody/holds", `{"currency":"USD","amount":1,"timeout_seconds":60}`),
			409: post("/v1/accounts/shut/holds", `{"currency":"USD","amount":1,"timeout_seconds":60}`),
			422: post("/v1/accounts/bob/holds", `{"currency":"USD","amount":1000,"timeout_seconds":60}`)},
		"listHolds":   {400: get("/v1/accounts/alice/holds?limit=0"), 404: get("/v1/accounts/nobody/holds")},
		"getHold":     {400: get("/v1/accounts/alice/holds/a:b"), 404: get("/v1/accounts/alice/holds/nohold")},
		"captureHold": {400: post("/v1/accounts/alice/holds/h-void/capture", `{"amount":0}`), 404: post("/v1/accounts/alice/holds/nohold/capture", ``), 409: post("/v1/accounts/alice/holds/h-done/capture", ``), 422: post("/v1/accounts/alice/holds/h-void/capture", `{"amount":11}`)},
		"voidHold":    {400: post("/v1/accounts/alice/holds/h-void/void", `x`), 404: post("/v1/accounts/alice/holds/nohold/void", ``), 409: post("/v1/accounts/alice/holds/h-done/void", ``)},
		"createTransfer": {400: post("/v1/transfers", `{"from":"alice","to":"alice","currency":"USD","amount":1}`),
			404: post("/v1/transfers", `{"from":"nobody","to":"bob","currency":"USD","amount":1}`),
			409: post("/v1/transfers", `{"from":"alice","to":"shut","currency":"USD","amount":1}`),
			422: post("/v1/transfers", `{"from":"bob","to":"alice","currency":"USD","amount":100000}`)},
		"getTransfer": {400: get("/v1/transfers/a:b"), 404: get("/v1/transfers/t-none")},
		"runBatch": {400: post("/v1/batch", batch(true)), 409: post("/v1/batch", batch(true, dep("alice"), dep("alice")), "Idempotency-Key", "batch-1"),
			422: post("/v1/batch", batch(true, dep("alice"), dep(other)))},
		"getConsoleAsset": {404: get("/console/nothing.txt")},
		"updateAccount": {400: {"PATCH", "/v1/accounts/alice", `{"overdraft_limit":{"USD":1.5}}`, nil},
			404: {"PATCH", "/v1/accounts/nobody", `{"overdraft_limit":{"USD":1}}`, nil},
			409: {"PATCH", "/v1/accounts/shut", `{"overdraft_limit":{"USD":1}}`, nil},
			422: {"PATCH", "/v1/accounts/full", `{"overdraft_limit":{"USD":1}}`, nil}},
		"createAlert": {400: post("/v1/accounts/alice/alerts", `{"currency":"USD","below":1,"above":2}`),
			404: post("/v1/accounts/nobody/alerts", `{"currency":"USD","below":1}`),
			409: post("/v1/accounts/full/alerts", `{"id":"a1","currency":"USD","below":1}`),
			422: post("/v1/accounts/full/alerts", `{"currency":"USD","below":1}`)},
		"listAlerts": {400: get("/v1/accounts/a:b/alerts"), 404: get("/v1/accounts/nobody/alerts")},
		"deleteAlert": {400: {"DELETE", "/v1/accounts/alice/alerts/a:b", "", nil}, 404: {"DELETE", "/v1/accounts/alice/alerts/none", "", nil},
			409: {"DELETE", "/v1/accounts/shut/alerts/x", "", nil}},
		"listTransfersByMetadata": {400: get("/v1/transfers?metadata.order_id=7&limit=0")},
		"listAccountsByMetadata":  {400: get("/v1/accounts?limit=5")},
	}
	// tenantErrs are sent with the tenant key.
	tenantErrs := map[string]map[int]walkCall{"runBatch": {404: post("/v1/batch", batch(false, dep("alice")))}}
	// A transfer still pending after the inline saga cannot be made on demand over HTTP (the
	// ledger's tests make them on Redis): a stub ledger answers one.
	pending, err := handlers.New(transferStub{res: ledger.TransferResult{Transfer: ledger.Transfer{ID: "t9", From: "alice", To: "bob",
		Currency: "USD", Amount: 5, Status: ledger.TransferPending, CreatedAt: frozen}}}, handlers.Config{})
	require.NoError(t, err)
	stubbed := map[string]map[int]http.Handler{"createTransfer": {http.StatusAccepted: pending}}

	locate := func(op string) (path string, method string) {
		for p, item := range s.doc.Paths.Map() {
			for m, o := range item.Operations() {
				if o.OperationID == op {
					return p, m
				}
			}
		}
		return "", ""
	}
	burn := send(t, limited.h, tokens["root"], get("/v1/accounts/alice")) // the rate limit's one request
	require.Equal(t, http.StatusOK, burn.Code)

	ops := documentedStatuses(s)
	names := make([]string, 0, len(ops))
	for op := range ops {
		names = append(names, op)
	}
	sort.Strings(names)
	for _, op := range names {
		path, method := locate(op)
		call, found := ok[op]
		if !assert.True(t, found, "operation %s has no successful request in TestOpenAPIWalk", op) {
			continue
		}
		v1 := strings.HasPrefix(path, "/v1/")
		lacking := "reader" // lacks write and admin
		if method == http.MethodGet {
			lacking = "writer"
		}
		big := call
		big.body = strings.Repeat(" ", maxBody+1)
		for _, status := range ops[op] {
			t.Run(fmt.Sprintf("%s/%d", op, status), func(t *testing.T) {
				var rec *httptest.ResponseRecorder
				switch c, specific := errs[op][status]; {
				case stubbed[op][status] != nil:
					rec = send(t, stubbed[op][status], "", call)
				case specific:
					rec = send(t, primary.h, tokens["root"], c)
				case tenantErrs[op][status].method != "":
					rec = send(t, primary.h, tokens["tenant"], tenantErrs[op][status])
				case status < 300:
					rec = send(t, primary.h, tokens["root"], call)
				case status == 401 && v1:
					rec = send(t, primary.h, "", call)
				case status == 403 && v1:
					rec = send(t, primary.h, tokens[lacking], call)
				case status == 413:
					rec = send(t, primary.h, tokens["root"], big)
				case status == 429 && v1:
					rec = send(t, limited.h, tokens["root"], call)
				case status == 500:
					rec = send(t, broken, "", call)
				case status == 503:
					rec = send(t, down.h, "", call)
				default:
					t.Fatalf("%s %s documents %d but TestOpenAPIWalk sends nothing that answers it", method, path, status)
				}
				require.Equal(t, status, rec.Code, "%s %s: %s", method, path, rec.Body.String())
				if status >= 400 {
					// The response's description names the problem codes it stands for.
					var p handlers.Problem
					require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
					r := responseAt(s, path, method, status)
					desc := *r.Value.Description
					if r.Description != nil {
						desc = *r.Description
					}
					assert.Contains(t, desc, p.Code, "%s %s %d: the description names the codes", method, path, status)
				}
			})
		}
	}
}

// responseAt returns the response the document gives for status of an operation.
func responseAt(s *spec, path, method string, status int) *openapi3.ResponseRef {
	return s.doc.Paths.Value(path).GetOperation(method).Responses.Status(status)
}

// panicking is a Ledger and a Relay whose every method panics (a nil interface), for the
// API's 500 answer.
type panicking struct {
	handlers.Ledger
	handlers.Relay
}

func (panicking) Status(ctx context.Context) ([]handlers.PartitionStatus, error) {
	panic("relay status exploded")
}

func (panicking) ReplayDeadLetters(ctx context.Context) (int, error) {
	panic("replay exploded")
}

// storeRelay is relayStatus whose Redis errors are store_unavailable, as cmd/tally's
// relayAdmin makes them.
type storeRelay struct{ relayStatus }

func (r storeRelay) Status(ctx context.Context) ([]handlers.PartitionStatus, error) {
	st, err := r.relayStatus.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ledger.ErrStoreUnavailable, err)
	}
	return st, nil
}

func (r storeRelay) ReplayDeadLetters(ctx context.Context) (int, error) {
	n, err := r.relayStatus.ReplayDeadLetters(ctx)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ledger.ErrStoreUnavailable, err)
	}
	return n, nil
}
