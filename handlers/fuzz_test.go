package handlers_test

import (
	"context"
	"encoding/json"
	"math/big"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// fuzzRoutes are the API's routes with the fuzzed parts: {id} is the fuzzed path segment;
// a GET's fuzzed body is its query string.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/accounts"},
	{"POST", "/v1/accounts/{id}/deposits"},
	{"POST", "/v1/accounts/{id}/withdrawals"},
	{"POST", "/v1/accounts/{id}/holds"},
	{"POST", "/v1/accounts/{id}/holds/h1/capture"},
	{"POST", "/v1/accounts/alice/holds/{id}/void"},
	{"POST", "/v1/transfers"},
	{"POST", "/v1/batch"},
	{"POST", "/v1/accounts/{id}/close"},
	{"GET", "/v1/accounts/{id}/events"},
	{"GET", "/v1/accounts/{id}"},
	{"GET", "/v1/transfers/{id}"},
	{"GET", "/v1/accounts/alice/holds/{id}"},
	{"GET", "/v1/transfers"}, // metadata lookups: the fuzzed query is all there is
	{"GET", "/v1/accounts"},
}

// goInternals are fragments of Go's own error messages and types: a problem detail written
// for API clients never contains them.
var goInternals = regexp.MustCompile(`json: |handlers\.|ledger\.|int64|reflect|struct \{|<nil>|%!|Go value`)

// FuzzRequests sends arbitrary bodies, path IDs, queries and Idempotency-Keys to every route
// of the API on a real Redis holding a few accounts and a pending hold, and checks DESIGN §10
// rule 5 for each: no 5xx, a 4xx is a problem+json whose detail speaks JSON (not Go) and
// changes nothing in Redis, a 2xx is a JSON object. Redis is put back to the seeded state
// after every request that changed it. Seed corpus: testdata/fuzz/FuzzRequests; CI fuzzes
// briefly (make fuzz).
func FuzzRequests(f *testing.F) {
	for _, s := range []struct {
		route    uint8
		id, body string
		idemKey  string
	}{
		{0, "", `{"id":"zed","allow_negative":true,"metadata":{"k":"v"}}`, ""},
		{1, "alice", `{"currency":"USD","amount":9223372036854775807}`, "dep-1"},
		{1, "alice", `{"currency":"USD","amount":1e3}`, ""},
		{2, "alice", `{"currency":"USD","amount":10001}`, ""},
		{3, "alice", `{"id":"h2","currency":"USD","amount":5,"timeout_seconds":60}`, ""},
		{4, "alice", `{"amount":10,"to":"g..b"}`, ""},
		{5, "h1", ``, ""},
		{6, "", `{"id":"t1","from":"g..a","to":"g..b","currency":"USD","amount":1}`, ""},
		{6, "", `{"from":"alice","to":"alice","currency":"USD","amount":1}`, "k"},
		{7, "", `{"atomic":true,"operations":[{"type":"deposit","account":"g..a","currency":"USD","amount":1},{"type":"withdrawal","account":"g..b","currency":"USD","amount":1}]}`, ""},
		{8, "g..b", `{}`, ""},
		{9, "alice", `after=1&limit=2`, ""},
		{10, "al%ice", ``, ""},
		{11, "t1", ``, ""},
		{12, "h1", ``, ""},
		{13, "", `metadata.order_id=1&limit=2&cursor=dDE`, ""},
		{14, "", `metadata.k=v`, ""},
	} {
		f.Add(s.route, s.id, []byte(s.body), s.idemKey)
	}

	srv := redistest.MustStart(f)
	rdb := srv.Client()
	l, err := ledger.Open(context.Background(), rdb, ledger.Config{})
	require.NoError(f, err)
	h, err := handlers.New(l, handlers.Config{MaxBodyBytes: 4096})
	require.NoError(f, err)
	for _, req := range []struct{ method, path, body string }{
		{"POST", "/v1/accounts", `{"id":"alice"}`},
		{"POST", "/v1/accounts", `{"id":"g..a"}`},
		{"POST", "/v1/accounts", `{"id":"g..b"}`},
		{"POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":10000}`},
		{"POST", "/v1/accounts/g..a/deposits", `{"currency":"USD","amount":500}`},
		{"POST", "/v1/accounts/alice/holds", `{"id":"h1","currency":"USD","amount":300,"timeout_seconds":86400}`},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(req.method, req.path, strings.NewReader(req.body)))
		require.Less(f, rec.Code, 300, "%s %s: %s", req.method, req.path, rec.Body.String())
	}
	snapshot := dumpAll(f, rdb)

	f.Fuzz(func(t *testing.T, route uint8, id string, body []byte, idemKey string) {
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		a := &api{t: t, h: h, rdb: rdb, l: l}
		if id == "" {
			id = "alice"
		}
		path := strings.Replace(r.path, "{id}", url.PathEscape(id), 1)
		payload := string(body)
		if r.method == "GET" {
			path += "?" + fuzzQuery(payload)
			payload = ""
		}
		var headers []string
		if idemKey != "" && !strings.ContainsAny(idemKey, "\r\n\x00") {
			headers = []string{"Idempotency-Key", idemKey}
		}
		before, lasting := a.digest(), a.lastingDigest()
		rec := a.do(r.method, path, payload, headers...)
		require.Less(t, rec.Code, 500, "%s %s %q: %s", r.method, path, payload, rec.Body.String())
		if rec.Code >= 400 {
			require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"), rec.Body.String())
			var p handlers.Problem
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p), rec.Body.String())
			require.Equal(t, rec.Code, p.Status)
			require.NotEmpty(t, p.Code)
			require.NotRegexp(t, goInternals, p.Detail)
			if a.digest() == before {
				return
			}
			// A refusal decided on what the ledger holds is kept under the client's key or
			// id, and only that: the same request again gets the same answer, replayed.
			require.Equal(t, lasting, a.lastingDigest(), "%s %s %q answered %d and changed Redis for good", r.method, path, payload, rec.Code)
			require.NotEqual(t, 400, rec.Code, "%s %s %q: a malformed request changed Redis", r.method, path, payload)
			again := a.do(r.method, path, payload, headers...)
			require.Equal(t, rec.Code, again.Code, "%s %s %q again", r.method, path, payload)
			require.Equal(t, rec.Body.String(), again.Body.String(), "%s %s %q again", r.method, path, payload)
			require.Equal(t, "true", again.Header().Get("Idempotent-Replayed"), "%s %s %q again", r.method, path, payload)
			return
		}
		var v map[string]any
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &v), "a %d answer must be a JSON object: %s", rec.Code, rec.Body.String())
		if a.digest() != before {
			restoreAll(t, rdb, snapshot)
		}
	})
}

// fuzzQuery reads s as "k=v&k=v" and returns it as a valid, escaped query string.
func fuzzQuery(s string) string {
	var parts []string
	for _, kv := range strings.Split(s, "&") {
		k, v, _ := strings.Cut(kv, "=")
		parts = append(parts, url.QueryEscape(k)+"="+url.QueryEscape(v))
	}
	return strings.Join(parts, "&")
}

// FuzzAmount checks the request decoder's money parser against math/big: a JSON amount is
// accepted exactly when it is an integer literal that fits int64, and then with its value.
func FuzzAmount(f *testing.F) {
	for _, s := range []string{"0", "-1", "1500", "9223372036854775807", "9223372036854775808",
		"-9223372036854775808", "1.0", "1e3", `"100"`, "null", "01", "-", "", " 1", "+1", "١"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var a handlers.Amount
		err := a.UnmarshalJSON([]byte(in))
		n, isInt := new(big.Int).SetString(in, 10)
		want := isInt && regexp.MustCompile(`^-?[0-9]+$`).MatchString(in) && n.IsInt64()
		if !want {
			require.Error(t, err, "%q accepted as %d", in, a.Value)
			require.False(t, a.Set)
			require.NotRegexp(t, goInternals, err.Error())
			return
		}
		require.NoError(t, err, "%q refused", in)
		require.True(t, a.Set)
		require.Equal(t, n.Int64(), a.Value)
	})
}

// dumpAll returns every key of rdb with its DUMP, for restoreAll.
func dumpAll(tb testing.TB, rdb *redis.Client) map[string]string {
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	require.NoError(tb, err)
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k], err = rdb.Dump(ctx, k).Result()
		require.NoError(tb, err)
	}
	return out
}

// restoreAll puts rdb back to the keys dumpAll returned.
func restoreAll(tb testing.TB, rdb *redis.Client, dump map[string]string) {
	ctx := context.Background()
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.FlushDB(ctx)
		for k, v := range dump {
			p.RestoreReplace(ctx, k, 0, v)
		}
		return nil
	})
	require.NoError(tb, err)
}
