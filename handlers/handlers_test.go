package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
)

// api is a running API on a real Redis.
type api struct {
	t   *testing.T
	h   http.Handler
	rdb *redis.Client
	l   *ledger.Ledger // for its partition placement
}

// mustAPI returns the API on a fresh real Redis with the ledger's defaults.
func mustAPI(t *testing.T, cfg handlers.Config) *api {
	t.Helper()
	return newAPI(t, redistest.MustStart(t).Client(), ledger.Config{}, cfg)
}

// newAPI opens a ledger on rdb with lcfg and returns the API over it.
func newAPI(t *testing.T, rdb *redis.Client, lcfg ledger.Config, cfg handlers.Config) *api {
	t.Helper()
	l, err := ledger.Open(context.Background(), rdb, lcfg)
	require.NoError(t, err)
	h, err := handlers.New(l, cfg)
	require.NoError(t, err)
	return &api{t: t, h: h, rdb: rdb, l: l}
}

// mustLocker returns a Locker over masters (clients with lock.MasterOptions), closed with
// its clients when the test ends.
func mustLocker(t *testing.T, masters []*redistest.Server, cfg lock.Config) *lock.Locker {
	t.Helper()
	clients := make([]redis.UniversalClient, len(masters))
	for i, m := range masters {
		c := redis.NewClient(lock.MasterOptions(m.Addr()))
		t.Cleanup(func() { c.Close() })
		clients[i] = c
	}
	locker, err := lock.New(clients, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = locker.Close() })
	return locker
}

// otherPartition returns the first ID prefix0, prefix1, ... whose partition differs from
// id's.
func (a *api) otherPartition(id, prefix string) string {
	a.t.Helper()
	for i := range 1000 {
		other := fmt.Sprintf("%s%d", prefix, i)
		if a.l.Partition(other) != a.l.Partition(id) {
			return other
		}
	}
	a.t.Fatalf("no ID with prefix %q outside the partition of %q", prefix, id)
	return ""
}

// mustOpen opens accounts and deposits amount USD into each (none when amount is 0).
func (a *api) mustOpen(amount int64, ids ...string) {
	a.t.Helper()
	for _, id := range ids {
		a.mustDo(http.StatusCreated, "POST", "/v1/accounts", fmt.Sprintf(`{"id":%q}`, id))
		if amount > 0 {
			a.mustDo(http.StatusCreated, "POST", "/v1/accounts/"+id+"/deposits", fmt.Sprintf(`{"currency":"USD","amount":%d}`, amount))
		}
	}
}

// balance returns an account's USD balance.
func (a *api) balance(id string) ledger.Balance {
	a.t.Helper()
	var acc ledger.Account
	require.NoError(a.t, json.Unmarshal(a.mustDo(http.StatusOK, "GET", "/v1/accounts/"+id, ``).Body.Bytes(), &acc))
	return acc.Balances["USD"]
}

// eventTypes returns the types of an account's events.
func (a *api) eventTypes(id string) []string {
	a.t.Helper()
	var page struct {
		Events []ledger.Event `json:"events"`
	}
	require.NoError(a.t, json.Unmarshal(a.mustDo(http.StatusOK, "GET", "/v1/accounts/"+id+"/events", ``).Body.Bytes(), &page))
	types := make([]string, len(page.Events))
	for i, e := range page.Events {
		types[i] = e.Type
	}
	return types
}

// do sends a request and returns the recorder. The response is checked against
// openapi.json (checkResponse), so every test's responses are.
func (a *api) do(method, path, body string, headers ...string) *httptest.ResponseRecorder {
	a.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	validating(a.t, a.h).ServeHTTP(rec, req)
	return rec
}

// mustDo sends a request and requires the status.
func (a *api) mustDo(status int, method, path, body string, headers ...string) *httptest.ResponseRecorder {
	a.t.Helper()
	rec := a.do(method, path, body, headers...)
	require.Equal(a.t, status, rec.Code, "%s %s: %s", method, path, rec.Body.String())
	return rec
}

// digest returns every key of the Redis with its full content, so tests can assert that a
// rejected request changed nothing at all.
func (a *api) digest() string { return a.digestOf(false) }

// lastingDigest is digest without the keys that expire: what a refusal recorded under a
// client's key (an idempotency record, a refused transfer ID's index) must leave alone.
func (a *api) lastingDigest() string { return a.digestOf(true) }

func (a *api) digestOf(lastingOnly bool) string {
	a.t.Helper()
	ctx := context.Background()
	keys, err := a.rdb.Keys(ctx, "*").Result()
	require.NoError(a.t, err)
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if lastingOnly && a.rdb.PTTL(ctx, k).Val() != -1 {
			continue
		}
		typ := a.rdb.Type(ctx, k).Val()
		var v any
		switch typ {
		case "hash":
			v = a.rdb.HGetAll(ctx, k).Val()
		case "stream":
			v = a.rdb.XRange(ctx, k, "-", "+").Val()
		default:
			v = a.rdb.Dump(ctx, k).Val()
		}
		fmt.Fprintf(&b, "%s %s %v\n", k, typ, v)
	}
	return b.String()
}

func requireProblem(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	var p handlers.Problem
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p), rec.Body.String())
	assert.Equal(t, code, p.Code)
	assert.Equal(t, status, p.Status)
	assert.NotEmpty(t, p.Title)
	assert.NotEmpty(t, p.Type)
}

func TestBadInputChangesNothing(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts", `{"id":"alice"}`)
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":9223372036854775000}`)
	a.mustDo(http.StatusCreated, "POST", "/v1/accounts/alice/deposits", `{"currency":"EUR","amount":100}`)

	dep := "/v1/accounts/alice/deposits"
	big := `{"currency":"USD","amount":1,"pad":"` + strings.Repeat("x", 2<<20) + `"}`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed JSON", "POST", dep, `{"currency":"USD",`, 400, "invalid_request"},
		{"not JSON", "POST", dep, `hello`, 400, "invalid_request"},
		{"empty body", "POST", dep, ``, 400, "invalid_request"},
		{"JSON array", "POST", dep, `[1,2]`, 400, "invalid_request"},
		{"trailing data", "POST", dep, `{"currency":"USD","amount":1}{}`, 400, "invalid_request"},
		{"unknown field", "POST", dep, `{"currency":"USD","amount":1,"memo":"x"}`, 400, "invalid_request"},
		{"missing amount", "POST", dep, `{"currency":"USD"}`, 400, "invalid_request"},
		{"null amount", "POST", dep, `{"currency":"USD","amount":null}`, 400, "invalid_request"},
		{"zero amount", "POST", dep, `{"currency":"USD","amount":0}`, 400, "invalid_request"},
		{"negative amount", "POST", dep, `{"currency":"USD","amount":-5}`, 400, "invalid_request"},
		{"float amount", "POST", dep, `{"currency":"USD","amount":1.5}`, 400, "invalid_request"},
		{"integral float amount", "POST", dep, `{"currency":"USD","amount":10.0}`, 400, "invalid_request"},
		{"string amount", "POST", dep, `{"currency":"USD","amount":"10"}`, 400, "invalid_request"},
		{"exponent amount", "POST", dep, `{"currency":"USD","amount":1e3}`, 400, "invalid_request"},
		{"amount beyond int64", "POST", dep, `{"currency":"USD","amount":9223372036854775808}`, 400, "invalid_request"},
		{"overflowing deposit", "POST", dep, `{"currency":"USD","amount":9223372036854775000}`, 422, "amount_overflow"},
		{"lowercase currency", "POST", dep, `{"currency":"usd","amount":1}`, 400, "invalid_request"},
		{"one-letter currency", "POST", dep, `{"currency":"U","amount":1}`, 400, "invalid_request"},
		{"missing currency", "POST", dep, `{"amount":1}`, 400, "invalid_request"},
		{"withdraw too much", "POST", "/v1/accounts/alice/withdrawals", `{"currency":"EUR","amount":101}`, 422, "insufficient_funds"},
		{"withdraw other currency", "POST", "/v1/accounts/alice/withdrawals", `{"currency":"GBP","amount":1}`, 422, "insufficient_funds"},
		{"id with braces", "POST", "/v1/accounts", `{"id":"a{1}b"}`, 400, "invalid_request"},
		{"id with colon", "POST", "/v1/accounts", `{"id":"a:b"}`, 400, "invalid_request"},
		{"id with space", "POST", "/v1/accounts", `{"id":"a b"}`, 400, "invalid_request"},
		{"id of 65 chars", "POST", "/v1/accounts", `{"id":"` + strings.Repeat("a", 65) + `"}`, 400, "invalid_request"},
		{"missing id", "POST", "/v1/accounts", `{}`, 400, "invalid_request"},
		{"non-bool allow_negative", "POST", "/v1/accounts", `{"id":"zed","allow_negative":"yes"}`, 400, "invalid_request"},
		{"path id with colon", "POST", "/v1/accounts/a:b/deposits", `{"currency":"USD","amount":1}`, 400, "invalid_request"},
		{"path id with braces", "GET", "/v1/accounts/%7Bx%7D", ``, 400, "invalid_request"},
		{"unknown account deposit", "POST", "/v1/accounts/nobody/deposits", `{"currency":"USD","amount":1}`, 404, "account_not_found"},
		{"unknown account read", "GET", "/v1/accounts/nobody", ``, 404, "account_not_found"},
		{"unknown account events", "GET", "/v1/accounts/nobody/events", ``, 404, "account_not_found"},
		{"duplicate account", "POST", "/v1/accounts", `{"id":"alice"}`, 409, "account_exists"},
		{"bad events limit", "GET", "/v1/accounts/alice/events?limit=abc", ``, 400, "invalid_request"},
		{"events limit too big", "GET", "/v1/accounts/alice/events?limit=100000", ``, 400, "invalid_request"},
		{"zero events limit", "GET", "/v1/accounts/alice/events?limit=0", ``, 400, "invalid_request"},
		{"negative after", "GET", "/v1/accounts/alice/events?after=-1", ``, 400, "invalid_request"},
		{"2 MiB body", "POST", dep, big, 413, "payload_too_large"},
		{"bad idempotency key", "POST", dep, `{"currency":"USD","amount":1}`, 400, "invalid_request"},
		{"unknown route", "GET", "/v1/nothing", ``, 404, "not_found"},
		{"wrong method", "DELETE", "/v1/accounts/alice", ``, 405, "method_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := a.digest()
			var headers []string
			if tc.name == "bad idempotency key" {
				headers = []string{"Idempotency-Key", "has spaces in it"}
			}
			requireProblem(t, a.do(tc.method, tc.path, tc.body, headers...), tc.status, tc.code)
			require.Equal(t, before, a.digest(), "a rejected request must change nothing")
		})
	}

	t.Run("2 MiB body without Content-Length", func(t *testing.T) {
		before := a.digest()
		req := httptest.NewRequest("POST", dep, struct{ *strings.Reader }{strings.NewReader(big)})
		req.ContentLength = -1
		rec := httptest.NewRecorder()
		validating(t, a.h).ServeHTTP(rec, req)
		requireProblem(t, rec, 413, "payload_too_large")
		require.Equal(t, before, a.digest())
	})
}

func TestWalkthrough(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	rec := a.mustDo(201, "POST", "/v1/accounts", `{"id":"alice","metadata":{"plan":"pro"}}`)
	assert.JSONEq(t, `{"id":"alice","version":1,"status":"open","allow_negative":false,"metadata":{"plan":"pro"},"balances":{}}`, rec.Body.String())
	rec = a.mustDo(201, "POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":1500}`)
	assert.JSONEq(t, `{"operation_id":"alice:2","account":{"id":"alice","version":2,"status":"open","allow_negative":false,"metadata":{"plan":"pro"},
		"balances":{"USD":{"posted":1500,"held":0,"available":1500}}}}`, rec.Body.String())
	a.mustDo(201, "POST", "/v1/accounts/alice/withdrawals", `{"currency":"USD","amount":500}`)
	requireProblem(t, a.do("POST", "/v1/accounts/alice/withdrawals", `{"currency":"USD","amount":5000}`), 422, "insufficient_funds")
	rec = a.mustDo(200, "GET", "/v1/accounts/alice", ``)
	assert.JSONEq(t, `{"id":"alice","version":3,"status":"open","allow_negative":false,"metadata":{"plan":"pro"},
		"balances":{"USD":{"posted":1000,"held":0,"available":1000}}}`, rec.Body.String())

	rec = a.mustDo(200, "GET", "/v1/accounts/alice/events?limit=2", ``)
	var page struct {
		Events []ledger.Event `json:"events"`
		Next   *int64         `json:"next"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &page))
	require.Len(t, page.Events, 2)
	require.NotNil(t, page.Next)
	assert.Equal(t, []string{"AccountOpened", "Deposited"}, []string{page.Events[0].Type, page.Events[1].Type})
	rec = a.mustDo(200, "GET", fmt.Sprintf("/v1/accounts/alice/events?after=%d", *page.Next), ``)
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &page))
	require.Len(t, page.Events, 1)
	assert.Equal(t, "Withdrawn", page.Events[0].Type)
	assert.Nil(t, page.Next)

	a.mustDo(200, "GET", "/healthz", ``)
	a.mustDo(200, "GET", "/readyz", ``)
}

func TestIdempotencyOverHTTP(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustDo(201, "POST", "/v1/accounts", `{"id":"bob"}`)
	key := []string{"Idempotency-Key", "order-42"}
	first := a.mustDo(201, "POST", "/v1/accounts/bob/deposits", `{"currency":"USD","amount":250}`, key...)
	again := a.mustDo(201, "POST", "/v1/accounts/bob/deposits", `{"amount":250, "currency":"USD"}`, key...)
	assert.Equal(t, first.Body.String(), again.Body.String(), "same key and request: original body byte for byte")
	assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
	requireProblem(t, a.do("POST", "/v1/accounts/bob/deposits", `{"currency":"USD","amount":251}`, key...), 409, "idempotency_key_reused")

	// Concurrent duplicates of one key apply once.
	var wg sync.WaitGroup
	bodies := make([]string, 20)
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := a.do("POST", "/v1/accounts/bob/withdrawals", `{"currency":"USD","amount":10}`, "Idempotency-Key", "wd-1")
			assert.Equal(t, 201, rec.Code, rec.Body.String())
			bodies[i] = rec.Body.String()
		}()
	}
	wg.Wait()
	for _, b := range bodies {
		assert.Equal(t, bodies[0], b)
	}
	rec := a.mustDo(200, "GET", "/v1/accounts/bob", ``)
	assert.JSONEq(t, `{"id":"bob","version":3,"status":"open","allow_negative":false,"balances":{"USD":{"posted":240,"held":0,"available":240}}}`, rec.Body.String())
}

func TestStoreDownIs503(t *testing.T) {
	srv := redistest.MustStart(t)
	a := newAPI(t, srv.Client(), ledger.Config{MaxRetries: 2}, handlers.Config{})
	a.mustDo(201, "POST", "/v1/accounts", `{"id":"x"}`)
	srv.Kill()
	rec := a.do("POST", "/v1/accounts/x/deposits", `{"currency":"USD","amount":1}`)
	requireProblem(t, rec, 503, "store_unavailable")
	assert.Equal(t, "1", rec.Header().Get("Retry-After"))
	assert.NotContains(t, rec.Body.String(), "127.0.0.1", "internal addresses are not leaked")
	requireProblem(t, a.do("GET", "/readyz", ``), 503, "store_unavailable")
}

func TestLockUnavailableIs503(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	masters := redistest.MustStartN(t, 3)
	locker := mustLocker(t, masters, lock.Config{WaitTimeout: 300 * time.Millisecond})
	a := newAPI(t, rdb, ledger.Config{Mode: ledger.ModeLock, Locker: locker}, handlers.Config{})
	a.mustDo(201, "POST", "/v1/accounts", `{"id":"alice"}`)

	masters[0].Kill()
	masters[1].Kill()
	before := a.digest()
	rec := a.do("POST", "/v1/accounts/alice/deposits", `{"currency":"USD","amount":5}`)
	requireProblem(t, rec, 503, "lock_unavailable")
	assert.Equal(t, "1", rec.Header().Get("Retry-After"))
	assert.Equal(t, before, a.digest(), "nothing written")
}
