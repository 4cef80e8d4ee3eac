package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// key returns the Key of token.
func key(name, token, prefix string, scopes ...handlers.Scope) handlers.Key {
	return handlers.Key{Name: name, SHA256: handlers.HashToken(token), Scopes: scopes, Prefix: prefix}
}

// mustKeys returns the key set keys.
func mustKeys(t *testing.T, keys ...handlers.Key) *handlers.Keys {
	t.Helper()
	k, err := handlers.NewKeys(keys)
	require.NoError(t, err)
	return k
}

// bearer returns the header pair that sends token.
func bearer(token string) []string { return []string{"Authorization", "Bearer " + token} }

// caller is one kind of client of the auth table.
type caller struct {
	name   string
	token  string // "" sends no Authorization header
	known  bool   // the token is in the key set
	scopes []handlers.Scope
	prefix string
}

// tenantPrefix confines the table's tenant key; the other tenant's accounts start with "o-".
const tenantPrefix = "t1-"

var (
	rd, wr, ad = handlers.ScopeRead, handlers.ScopeWrite, handlers.ScopeAdmin
	callers    = []caller{
		{name: "no key"},
		{name: "wrong key", token: "not-a-known-token-0123456789"},
		{name: "reader", token: "reader-token-0123456789", known: true, scopes: []handlers.Scope{rd}},
		{name: "writer", token: "writer-token-0123456789", known: true, scopes: []handlers.Scope{wr}},
		{name: "admin", token: "admin-token-0123456789", known: true, scopes: []handlers.Scope{ad}},
		{name: "operator", token: "operator-token-0123456789", known: true, scopes: []handlers.Scope{rd, wr, ad}},
		{name: "tenant", token: "tenant-token-0123456789", known: true, scopes: []handlers.Scope{rd, wr}, prefix: tenantPrefix},
	}
	operator = callers[5]
)

// ids are the resources one call of the table acts on, fresh for each call: A (funded, with
// a pending hold) and C (empty) with one prefix, B with another, and a transfer A→B.
type ids struct{ A, B, C, Hold, Transfer string }

// authFixture makes the table's resources through an operator key.
type authFixture struct {
	a *api
	n int
}

// make returns fresh IDs with A and C under aPrefix, B under bPrefix. Unless they are
// missing, the accounts are opened, A funded with 1000 and a hold of 100 placed on it, and
// a transfer of 1 made from A to B (when both exist).
func (f *authFixture) make(aPrefix, bPrefix string, createA, createB bool) ids {
	f.n++
	v := ids{A: fmt.Sprintf("%sa%04d", aPrefix, f.n), B: fmt.Sprintf("%sb%04d", bPrefix, f.n), C: fmt.Sprintf("%sc%04d", aPrefix, f.n),
		Hold: fmt.Sprintf("h%04d", f.n), Transfer: fmt.Sprintf("tr%04d", f.n)}
	op := bearer(operator.token)
	if createA {
		f.a.mustDo(201, "POST", "/v1/accounts", fmt.Sprintf(`{"id":%q,"metadata":{"owner":%q}}`, v.A, v.A), op...)
		f.a.mustDo(201, "POST", "/v1/accounts", fmt.Sprintf(`{"id":%q,"metadata":{"owner":%q}}`, v.C, v.A), op...)
		f.a.mustDo(201, "POST", "/v1/accounts/"+v.A+"/deposits", `{"currency":"USD","amount":1000}`, op...)
		f.a.mustDo(201, "POST", "/v1/accounts/"+v.A+"/holds", fmt.Sprintf(`{"id":%q,"currency":"USD","amount":100,"timeout_seconds":3600}`, v.Hold), op...)
		f.a.mustDo(201, "POST", "/v1/accounts/"+v.A+"/alerts", fmt.Sprintf(`{"id":%q,"currency":"USD","below":0}`, v.Hold), op...)
	}
	if createB {
		f.a.mustDo(201, "POST", "/v1/accounts", fmt.Sprintf(`{"id":%q,"metadata":{"owner":%q}}`, v.B, v.A), op...)
	}
	if createA && createB {
		rec := f.a.do("POST", "/v1/transfers", fmt.Sprintf(`{"id":%q,"from":%q,"to":%q,"currency":"USD","amount":1,"metadata":{"order":%q}}`, v.Transfer, v.A, v.B, v.Transfer), op...)
		require.Contains(f.a.t, []int{201, 202}, rec.Code, rec.Body.String())
	}
	return v
}

// normalize replaces the IDs of v in an answer with their role, so that the answers for
// two sets of IDs compare.
func (v ids) normalize(body string) string {
	return strings.NewReplacer(v.Transfer, "<T>", v.Hold, "<H>", v.A, "<A>", v.B, "<B>", v.C, "<C>").Replace(body)
}

// call is one request of the table.
type call struct{ method, path, body string }

// How a tenant key is confined on a route.
const (
	tenantNone   = ""       // no accounts (public routes)
	tenantPath   = "path"   // the path's account: another tenant's answers as a missing one
	tenantBody   = "body"   // accounts A and B in the body (or the path and the body)
	tenantOpen   = "open"   // the new account's ID: 403 outside the prefix
	tenantBatch  = "batch"  // every operation's accounts: 404 account_not_found for the batch
	tenantGlobal = "global" // every tenant's state: 403 for a tenant key
	tenantFilter = "filter" // a lookup across tenants: 200, with only the tenant's own records
)

// authRoute is the policy of one route and how to call it.
type authRoute struct {
	scope  handlers.Scope // "" for a public route (no authentication)
	tenant string
	create bool // the call's accounts are created first (not for opening one)
	call   func(v ids) call
}

func authRoutes() map[string]authRoute {
	money := `{"currency":"USD","amount":1}`
	return map[string]authRoute{
		"GET /healthz":        {call: func(ids) call { return call{"GET", "/healthz", ""} }},
		"GET /readyz":         {call: func(ids) call { return call{"GET", "/readyz", ""} }},
		"GET /openapi.json":   {call: func(ids) call { return call{"GET", "/openapi.json", ""} }},
		"GET /metrics":        {call: func(ids) call { return call{"GET", "/metrics", ""} }},
		"GET /console":        {call: func(ids) call { return call{"GET", "/console", ""} }},
		"GET /console/:asset": {call: func(ids) call { return call{"GET", "/console/console.js", ""} }},
		"POST /v1/accounts": {scope: wr, tenant: tenantOpen, call: func(v ids) call {
			return call{"POST", "/v1/accounts", fmt.Sprintf(`{"id":%q}`, v.A)}
		}},
		"GET /v1/accounts/:id": {scope: rd, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts/" + v.A, ""}
		}},
		"GET /v1/accounts/:id/events": {scope: rd, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts/" + v.A + "/events", ""}
		}},
		"GET /v1/accounts/:id/balances": {scope: rd, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts/" + v.A + "/balances?at_version=1", ""}
		}},
		"POST /v1/accounts/:id/deposits": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.A + "/deposits", money}
		}},
		"POST /v1/accounts/:id/withdrawals": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.A + "/withdrawals", money}
		}},
		"POST /v1/accounts/:id/close": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.C + "/close", ""}
		}},
		"POST /v1/accounts/:id/holds": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.A + "/holds", `{"currency":"USD","amount":1,"timeout_seconds":60}`}
		}},
		"GET /v1/accounts/:id/holds": {scope: rd, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts/" + v.A + "/holds", ""}
		}},
		"GET /v1/accounts/:id/holds/:hold": {scope: rd, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts/" + v.A + "/holds/" + v.Hold, ""}
		}},
		"POST /v1/accounts/:id/holds/:hold/capture": {scope: wr, tenant: tenantBody, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.A + "/holds/" + v.Hold + "/capture", fmt.Sprintf(`{"to":%q}`, v.B)}
		}},
		"POST /v1/accounts/:id/holds/:hold/void": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.A + "/holds/" + v.Hold + "/void", ""}
		}},
		"PATCH /v1/accounts/:id": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"PATCH", "/v1/accounts/" + v.A, `{"overdraft_limit":{"USD":1}}`}
		}},
		"POST /v1/accounts/:id/alerts": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"POST", "/v1/accounts/" + v.A + "/alerts", `{"currency":"USD","above":1}`}
		}},
		"GET /v1/accounts/:id/alerts": {scope: rd, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts/" + v.A + "/alerts", ""}
		}},
		"DELETE /v1/accounts/:id/alerts/:alert": {scope: wr, tenant: tenantPath, create: true, call: func(v ids) call {
			return call{"DELETE", "/v1/accounts/" + v.A + "/alerts/" + v.Hold, ""}
		}},
		"POST /v1/transfers": {scope: wr, tenant: tenantBody, create: true, call: func(v ids) call {
			return call{"POST", "/v1/transfers", fmt.Sprintf(`{"from":%q,"to":%q,"currency":"USD","amount":1}`, v.A, v.B)}
		}},
		"GET /v1/transfers": {scope: rd, tenant: tenantFilter, create: true, call: func(v ids) call {
			return call{"GET", "/v1/transfers?metadata.order=" + v.Transfer, ""}
		}},
		"GET /v1/accounts": {scope: rd, tenant: tenantFilter, create: true, call: func(v ids) call {
			return call{"GET", "/v1/accounts?metadata.owner=" + v.A, ""}
		}},
		"GET /v1/transfers/:id": {scope: rd, tenant: tenantBody, create: true, call: func(v ids) call {
			return call{"GET", "/v1/transfers/" + v.Transfer, ""}
		}},
		"POST /v1/batch": {scope: wr, tenant: tenantBatch, create: true, call: func(v ids) call {
			return call{"POST", "/v1/batch", fmt.Sprintf(`{"atomic":false,"operations":[`+
				`{"type":"deposit","account":%q,"currency":"USD","amount":1},`+
				`{"type":"transfer","from":%q,"to":%q,"currency":"USD","amount":1}]}`, v.A, v.A, v.B)}
		}},
		"GET /v1/relay": {scope: rd, tenant: tenantGlobal, call: func(ids) call { return call{"GET", "/v1/relay", ""} }},
		"POST /v1/relay/dead-letters/replay": {scope: ad, tenant: tenantGlobal, call: func(ids) call {
			return call{"POST", "/v1/relay/dead-letters/replay", ""}
		}},
	}
}

// digest returns Redis's digest of its whole dataset (DEBUG DIGEST: one command, so every
// refused call of the table can be checked to change nothing).
func (a *api) fastDigest() string {
	a.t.Helper()
	d, err := a.rdb.Do(context.Background(), "DEBUG", "DIGEST").Text()
	require.NoError(a.t, err)
	return d
}

// TestAuthTable calls every route the router serves as every kind of caller — no key, an
// unknown key, a key with each scope alone, one with all, and a tenant key (read and write,
// prefix t1-) on its own accounts, on another tenant's, and on a mix — and requires the
// exact answer: 401 with WWW-Authenticate, 403 for a missing scope or a tenant on global
// state, 404 exactly as for a missing account (or transfer, or hold) for another tenant's,
// 2xx otherwise. Every refused call changes nothing in Redis. A route without a row fails
// the test.
func TestAuthTable(t *testing.T) {
	srv := redistest.MustStart(t, redistest.WithArgs("--enable-debug-command", "local"))
	rdb := srv.Client()
	var keys []handlers.Key
	for _, c := range callers {
		if c.known {
			keys = append(keys, key(c.name, c.token, c.prefix, c.scopes...))
		}
	}
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{})
	require.NoError(t, err)
	a := newAPI(t, rdb, ledger.Config{}, handlers.Config{Keys: mustKeys(t, keys...), Relay: relayStatus{admin}, Metrics: promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{})})
	f := &authFixture{a: a}
	table := authRoutes()

	parent := t
	var served []string
	for _, r := range a.h.(interface{ Routes() gin.RoutesInfo }).Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	for _, route := range served {
		rt, ok := table[route]
		if !assert.True(t, ok, "route %s has no row in the auth table: add one", route) {
			continue
		}
		for _, c := range callers {
			variants := []string{"own"}
			if c.prefix != "" && rt.scope != "" {
				variants = []string{"own", "foreign", "mixed"}
			}
			for _, variant := range variants {
				t.Run(route+"/"+c.name+"/"+variant, func(t *testing.T) {
					a.t = t
					defer func() { a.t = parent }()
					checkAuthCall(t, f, rt, c, variant)
				})
			}
		}
	}
	for route := range table {
		assert.Contains(t, served, route, "the auth table has a row for a route that is not served")
	}
}

// checkAuthCall makes one call of the table and checks its answer.
func checkAuthCall(t *testing.T, f *authFixture, rt authRoute, c caller, variant string) {
	a := f.a
	prefixes := map[string][2]string{"own": {tenantPrefix, tenantPrefix}, "foreign": {"o-", "o-"}, "mixed": {tenantPrefix, "o-"}}[variant]
	v := f.make(prefixes[0], prefixes[1], rt.create, rt.create)
	cl := rt.call(v)
	var headers []string
	if c.token != "" {
		headers = bearer(c.token)
	}
	before := a.fastDigest()
	rec := a.do(cl.method, cl.path, cl.body, headers...)
	has := slices.Contains(c.scopes, rt.scope)

	switch {
	case rt.scope == "":
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		return
	case !c.known:
		requireProblem(t, rec, 401, "unauthorized")
		challenge := `Bearer realm="tally"`
		if c.token != "" {
			challenge += `, error="invalid_token"`
		}
		assert.Equal(t, challenge, rec.Header().Get("WWW-Authenticate"))
	case !has:
		requireProblem(t, rec, 403, "forbidden")
	case c.prefix != "" && rt.tenant == tenantGlobal:
		requireProblem(t, rec, 403, "forbidden")
	case c.prefix != "" && variant == "foreign" && rt.tenant == tenantOpen:
		requireProblem(t, rec, 403, "forbidden")
	case c.prefix != "" && rt.tenant == tenantFilter:
		// Every variant answers 200 with the tenant's records only: never another's IDs.
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		visible := map[string]bool{v.A: strings.HasPrefix(v.A, tenantPrefix), v.B: strings.HasPrefix(v.B, tenantPrefix),
			v.C: strings.HasPrefix(v.C, tenantPrefix)}
		visible[v.Transfer] = visible[v.A] && visible[v.B] // a transfer is seen by a tenant owning both ends
		for id, ok := range visible {
			if !ok {
				assert.NotContains(t, rec.Body.String(), `"`+id+`"`, "another tenant's record in a lookup")
			}
		}
		if variant == "own" {
			assert.Contains(t, rec.Body.String(), `"`+v.A+`"`, "the tenant finds its own records")
		}
	case c.prefix != "" && (variant == "foreign" && rt.tenant != tenantOpen ||
		variant == "mixed" && (rt.tenant == tenantBody || rt.tenant == tenantBatch)):
		// Another tenant's account: the same answer as for a missing one (IDs aside).
		if rt.tenant == tenantBatch {
			requireProblem(t, rec, 404, "account_not_found")
			break
		}
		assert.Equal(t, 404, rec.Code, rec.Body.String())
		assert.Equal(t, before, a.fastDigest(), "a refused call changed Redis")
		var m ids
		if variant == "foreign" {
			m = f.make(tenantPrefix+"z", tenantPrefix+"z", false, false)
		} else {
			m = f.make(tenantPrefix, tenantPrefix+"z", true, false)
		}
		mc := rt.call(m)
		missing := a.do(mc.method, mc.path, mc.body, headers...)
		assert.Equal(t, m.normalize(missing.Body.String()), v.normalize(rec.Body.String()), "as for a missing account")
		assert.Equal(t, missing.Code, rec.Code)
		missing.Header().Del("X-Request-ID")
		rec.Header().Del("X-Request-ID")
		assert.Equal(t, missing.Header(), rec.Header(), "headers too (X-Request-ID aside)")
		return
	default:
		assert.True(t, rec.Code >= 200 && rec.Code < 300, "want 2xx, got %d: %s", rec.Code, rec.Body.String())
		return
	}
	assert.Equal(t, before, a.fastDigest(), "a refused call changed Redis")
}

// TestParseKeys: every malformed keys file is refused with a message that names the
// problem; a good one parses.
func TestParseKeys(t *testing.T) {
	h := handlers.HashToken("token")
	good := fmt.Sprintf(`[{"name":"app","sha256":%q,"scopes":["read","write"]},{"name":"ops","sha256":%q,"scopes":["admin","read"]},{"name":"acme","sha256":%q,"scopes":["read"],"prefix":"acme-"}]`,
		h, handlers.HashToken("other"), strings.ToUpper(handlers.HashToken("third")))
	keys, err := handlers.ParseKeys([]byte(good))
	require.NoError(t, err)
	require.Len(t, keys, 3)
	assert.Equal(t, "acme-", keys[2].Prefix)

	for _, tc := range []struct{ name, file, want string }{
		{"not JSON", `nope`, "want a JSON array"},
		{"an object", `{"name":"a"}`, "want a JSON array"},
		{"null", `null`, "got null"},
		{"empty", `[]`, "no keys"},
		{"trailing data", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"]}] []`, h), "data after"},
		{"unknown field", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"],"token":"x"}]`, h), `unknown field "token"`},
		{"empty name", fmt.Sprintf(`[{"name":"","sha256":%q,"scopes":["read"]}]`, h), "name is required"},
		{"name with a space", fmt.Sprintf(`[{"name":"a b","sha256":%q,"scopes":["read"]}]`, h), "printable ASCII"},
		{"short hash", `[{"name":"a","sha256":"abc","scopes":["read"]}]`, "64 hex digits"},
		{"bad hex", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"]}]`, strings.Repeat("zz", 32)), "not hex"},
		{"no scopes", fmt.Sprintf(`[{"name":"a","sha256":%q}]`, h), "scopes is required"},
		{"unknown scope", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read","delete"]}]`, h), `unknown scope "delete"`},
		{"repeated scope", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read","read"]}]`, h), "repeats"},
		{"empty prefix", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"],"prefix":""}]`, h), "prefix is empty"},
		{"bad prefix", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"],"prefix":"acme:"}]`, h), "prefix must match"},
		{"admin with a prefix", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["admin"],"prefix":"acme-"}]`, h), "admin scope cannot have a prefix"},
		{"duplicate name", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"]},{"name":"a","sha256":%q,"scopes":["read"]}]`, h, handlers.HashToken("x")), "name repeats key 0"},
		{"duplicate hash", fmt.Sprintf(`[{"name":"a","sha256":%q,"scopes":["read"]},{"name":"b","sha256":%q,"scopes":["read"]}]`, h, strings.ToUpper(h)), "sha256 repeats key 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := handlers.ParseKeys([]byte(tc.file))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "keys file")
		})
	}
}

// TestKeysReplace: a valid set replaces the keys at once (the old token stops working, the
// new one works); an invalid one is refused and the set in force stays.
func TestKeysReplace(t *testing.T) {
	keys := mustKeys(t, key("app", "old-token-0123456789", "", rd))
	a := mustAPI(t, handlers.Config{Keys: keys})
	requireProblem(t, a.do("GET", "/v1/accounts/x", ``, bearer("old-token-0123456789")...), 404, "account_not_found")

	require.NoError(t, keys.Replace([]handlers.Key{key("app", "new-token-0123456789", "", rd), key("ci", "ci-token-0123456789", "", rd)}))
	assert.Equal(t, 2, keys.Len())
	requireProblem(t, a.do("GET", "/v1/accounts/x", ``, bearer("old-token-0123456789")...), 401, "unauthorized")
	requireProblem(t, a.do("GET", "/v1/accounts/x", ``, bearer("new-token-0123456789")...), 404, "account_not_found")

	require.Error(t, keys.Replace([]handlers.Key{key("app", "x", "", "delete")}))
	require.Error(t, keys.Replace(nil))
	assert.Equal(t, 2, keys.Len(), "a refused set changes nothing")
	requireProblem(t, a.do("GET", "/v1/accounts/x", ``, bearer("new-token-0123456789")...), 404, "account_not_found")
}

// TestNoKeys: without keys every /v1 request reads and writes as before, and admin
// operations are refused (403) unless InsecureAdmin; InsecureAdmin with keys is refused.
func TestNoKeys(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{})
	require.NoError(t, err)
	a := newAPI(t, rdb, ledger.Config{}, handlers.Config{Relay: relayStatus{admin}})
	a.mustOpen(10, "alice")
	a.mustDo(200, "GET", "/v1/relay", ``)
	rec := a.do("POST", "/v1/relay/dead-letters/replay", ``)
	requireProblem(t, rec, 403, "forbidden")
	assert.Contains(t, rec.Body.String(), "--insecure-admin")

	insecure := newAPI(t, rdb, ledger.Config{}, handlers.Config{Relay: relayStatus{admin}, InsecureAdmin: true})
	insecure.mustDo(200, "POST", "/v1/relay/dead-letters/replay", ``)

	_, err = handlers.New(nil, handlers.Config{InsecureAdmin: true, Keys: mustKeys(t, key("a", "tok", "", ad))})
	require.ErrorContains(t, err, "InsecureAdmin")
	_, err = handlers.New(nil, handlers.Config{Keys: &handlers.Keys{}})
	require.ErrorContains(t, err, "no key")
}

// TestRateLimit: a key gets its burst, then 429 rate_limited with an integer Retry-After of
// at least 1, which changes nothing; another key still gets its own burst; without keys all
// requests share one bucket; time (a test clock) refills the bucket. No sleeps: the burst is
// counted.
func TestRateLimit(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	keys := mustKeys(t, key("one", "one-token-0123456789", "", rd, wr), key("two", "two-token-0123456789", "", rd, wr))
	srv := redistest.MustStart(t, redistest.WithArgs("--enable-debug-command", "local"))
	a := newAPI(t, srv.Client(), ledger.Config{}, handlers.Config{Keys: keys, RateLimit: handlers.RateLimit{PerSecond: 2, Burst: 5}, Clock: clock})
	one, two := bearer("one-token-0123456789"), bearer("two-token-0123456789")
	a.mustDo(201, "POST", "/v1/accounts", `{"id":"alice"}`, one...)
	for range 4 {
		a.mustDo(404, "GET", "/v1/accounts/bob", ``, one...)
	}
	before := a.fastDigest()
	rec := a.do("POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":1}`, one...)
	requireProblem(t, rec, 429, "rate_limited")
	assert.Equal(t, "1", rec.Header().Get("Retry-After"), "one request every 500ms: back within a second")
	assert.Equal(t, before, a.fastDigest(), "a refused write changes nothing")

	for range 5 {
		a.mustDo(404, "GET", "/v1/accounts/bob", ``, two...)
	}
	requireProblem(t, a.do("GET", "/v1/accounts/bob", ``, two...), 429, "rate_limited")
	requireProblem(t, a.do("GET", "/v1/accounts/bob", ``, one...), 429, "rate_limited")
	requireProblem(t, a.do("GET", "/v1/accounts/bob", ``), 401, "unauthorized")
	a.mustDo(200, "GET", "/healthz", ``) // not /v1: never limited

	now = now.Add(500 * time.Millisecond)
	a.mustDo(404, "GET", "/v1/accounts/bob", ``, one...)
	requireProblem(t, a.do("GET", "/v1/accounts/bob", ``, one...), 429, "rate_limited")

	// A slow sustained rate: Retry-After rounds up to whole seconds.
	slow := newAPI(t, srv.Client(), ledger.Config{}, handlers.Config{Keys: keys, RateLimit: handlers.RateLimit{PerSecond: 1, Burst: 1}, Clock: clock})
	slow.mustDo(404, "GET", "/v1/accounts/bob", ``, one...)
	now = now.Add(100 * time.Millisecond)
	rec = slow.do("GET", "/v1/accounts/bob", ``, one...)
	requireProblem(t, rec, 429, "rate_limited")
	assert.Equal(t, "1", rec.Header().Get("Retry-After"), "900ms rounds up to 1s")

	anon := newAPI(t, srv.Client(), ledger.Config{}, handlers.Config{RateLimit: handlers.RateLimit{PerSecond: 1, Burst: 2}, Clock: clock})
	anon.mustDo(404, "GET", "/v1/accounts/bob", ``)
	anon.mustDo(404, "GET", "/v1/accounts/bob", ``, "X-Forwarded-For", "10.0.0.9")
	requireProblem(t, anon.do("GET", "/v1/accounts/bob", ``), 429, "rate_limited")

	for _, rl := range []handlers.RateLimit{{PerSecond: -1}, {Burst: -1}, {Burst: 3}} {
		_, err := handlers.New(nil, handlers.Config{RateLimit: rl})
		assert.Error(t, err, "%+v", rl)
	}
}

// TestRequestLog: every request is logged once with its request ID (the client's when
// sane, else a new one; echoed in X-Request-ID), status, route and key name, and never the
// token.
func TestRequestLog(t *testing.T) {
	logs := &syncWriter{w: &bytes.Buffer{}}
	token := "secret-token-0123456789"
	a := mustAPI(t, handlers.Config{Keys: mustKeys(t, key("billing", token, "", rd, wr)),
		Logger: slog.New(slog.NewJSONHandler(logs, nil))})

	rec := a.do("GET", "/v1/accounts/nobody", ``, "Authorization", "Bearer "+token, "X-Request-ID", "req-42.a:b")
	requireProblem(t, rec, 404, "account_not_found")
	assert.Equal(t, "req-42.a:b", rec.Header().Get("X-Request-ID"))
	rec = a.do("POST", "/v1/accounts", `{"id":"alice"}`, "Authorization", "Bearer "+token, "X-Request-ID", "bad id\x01with junk")
	require.Equal(t, 201, rec.Code)
	generated := rec.Header().Get("X-Request-ID")
	assert.Regexp(t, `^[A-Z2-7]{26}$`, generated, "an insane ID is replaced")
	rec = a.do("GET", "/v1/accounts/alice", ``, "Authorization", "Bearer wrong")
	requireProblem(t, rec, 401, "unauthorized")
	assert.NotEmpty(t, rec.Header().Get("X-Request-ID"), "refusals carry an ID too")

	lines := logLines(t, logs.String())
	require.Len(t, lines, 3, "one line per request")
	assert.Equal(t, map[string]any{"msg": "request", "request_id": "req-42.a:b", "method": "GET", "path": "/v1/accounts/nobody",
		"route": "/v1/accounts/:id", "status": 404.0, "key": "billing", "level": "INFO"}, pick(lines[0], "msg", "request_id", "method", "path", "route", "status", "key", "level"))
	assert.Equal(t, generated, lines[1]["request_id"])
	assert.Equal(t, 201.0, lines[1]["status"])
	assert.Equal(t, "", lines[2]["key"], "no key for a refused token")
	assert.Equal(t, 401.0, lines[2]["status"])
	assert.NotContains(t, logs.String(), token)
	assert.NotContains(t, logs.String(), "wrong")
}

// logLines decodes JSON log lines.
func logLines(t *testing.T, text string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		out = append(out, m)
	}
	return out
}

// pick returns the named fields of m.
func pick(m map[string]any, names ...string) map[string]any {
	out := map[string]any{}
	for _, n := range names {
		out[n] = m[n]
	}
	return out
}
