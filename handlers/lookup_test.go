package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

type transfersPage struct {
	Transfers []ledger.Transfer `json:"transfers"`
	Next      string            `json:"next_cursor"`
}

type accountsPage struct {
	Accounts []ledger.Account `json:"accounts"`
	Next     string           `json:"next_cursor"`
}

// pageAll follows next_cursor from path (which has its query already) and returns the IDs
// of every page's items, in order.
func pageAll[P any](t *testing.T, a *api, path string, ids func(P) ([]string, string), headers ...string) []string {
	t.Helper()
	out := []string{}
	cursor := ""
	for range 1000 {
		p := path
		if cursor != "" {
			p += "&cursor=" + url.QueryEscape(cursor)
		}
		var page P
		require.NoError(t, json.Unmarshal(a.mustDo(200, "GET", p, ``, headers...).Body.Bytes(), &page))
		got, next := ids(page)
		out = append(out, got...)
		if next == "" {
			return out
		}
		cursor = next
	}
	t.Fatal("paging did not end")
	return nil
}

func transferPageIDs(p transfersPage) ([]string, string) {
	var ids []string
	for _, t := range p.Transfers {
		ids = append(ids, t.ID)
	}
	return ids, p.Next
}

func accountPageIDs(p accountsPage) ([]string, string) {
	var ids []string
	for _, a := range p.Accounts {
		ids = append(ids, a.ID)
	}
	return ids, p.Next
}

// TestMetadataLookupAPI: GET /v1/transfers and /v1/accounts find records by one metadata
// pair, page by cursor, refuse malformed queries with 400 problem+json (changing nothing),
// and never show a tenant another tenant's records.
func TestMetadataLookupAPI(t *testing.T) {
	keys := mustKeys(t, key("root", "root-token-0123456789", "", rd, wr),
		key("acme", "acme-token-0123456789", "acme-", rd, wr), key("beta", "beta-token-0123456789", "beta-", rd, wr))
	a := mustAPI(t, handlers.Config{Keys: keys})
	root, acme, beta := bearer("root-token-0123456789"), bearer("acme-token-0123456789"), bearer("beta-token-0123456789")

	// Two tenants, each with accounts across partitions and transfers between them, all
	// with the same order_id; a value with characters that need escaping.
	odd := "a b&c=d/é"
	var want = map[string][]string{}
	for _, tenant := range []string{"acme-", "beta-"} {
		for i := range 6 {
			id := fmt.Sprintf("%s%d", tenant, i)
			a.mustDo(201, "POST", "/v1/accounts", fmt.Sprintf(`{"id":%q,"metadata":{"customer":"42"}}`, id), root...)
			a.mustDo(201, "POST", "/v1/accounts/"+id+"/deposits", `{"currency":"USD","amount":100}`, root...)
			want[tenant+"accounts"] = append(want[tenant+"accounts"], id)
		}
		for i := range 5 {
			id := fmt.Sprintf("%st%d", tenant, i)
			body := fmt.Sprintf(`{"id":%q,"from":"%s%d","to":"%s%d","currency":"USD","amount":1,"metadata":{"order_id":"123","odd":%q}}`, id, tenant, i, tenant, i+1, odd)
			rec := a.mustDo(201, "POST", "/v1/transfers", body, root...)
			require.Contains(t, rec.Body.String(), `"order_id":"123"`)
			want[tenant+"transfers"] = append(want[tenant+"transfers"], id)
		}
	}
	// Refused: not found by a lookup.
	requireProblem(t, a.do("POST", "/v1/transfers", `{"id":"acme-refused","from":"acme-0","to":"acme-1","currency":"USD","amount":100000,"metadata":{"order_id":"123"}}`, root...), 422, "insufficient_funds")
	// A transfer between the tenants (made by root): neither tenant sees it.
	a.mustDo(201, "POST", "/v1/transfers", `{"id":"cross","from":"acme-5","to":"beta-5","currency":"USD","amount":1,"metadata":{"order_id":"123"}}`, root...)

	all := append(append(append([]string{}, want["acme-transfers"]...), want["beta-transfers"]...), "cross")
	for _, limit := range []int{1, 4, 100} {
		path := fmt.Sprintf("/v1/transfers?metadata.order_id=123&limit=%d", limit)
		assert.Equal(t, all, pageAll(t, a, path, transferPageIDs, root...), "root, limit %d", limit)
		assert.Equal(t, want["acme-transfers"], pageAll(t, a, path, transferPageIDs, acme...), "acme, limit %d", limit)
		assert.Equal(t, want["beta-transfers"], pageAll(t, a, path, transferPageIDs, beta...), "beta, limit %d", limit)
		path = fmt.Sprintf("/v1/accounts?metadata.customer=42&limit=%d", limit)
		assert.Equal(t, append(append([]string{}, want["acme-accounts"]...), want["beta-accounts"]...), pageAll(t, a, path, accountPageIDs, root...))
		assert.Equal(t, want["acme-accounts"], pageAll(t, a, path, accountPageIDs, acme...))
		assert.Equal(t, want["beta-accounts"], pageAll(t, a, path, accountPageIDs, beta...))
	}
	assert.Equal(t, all[:10], pageAll(t, a, "/v1/transfers?metadata.odd="+url.QueryEscape(odd), transferPageIDs, root...), "an escaped value")
	assert.Empty(t, pageAll(t, a, "/v1/transfers?metadata.order_id=12", transferPageIDs, root...), "exact match only")
	assert.Empty(t, pageAll(t, a, "/v1/accounts?metadata.order_id=123", accountPageIDs, root...), "accounts and transfers apart")
	var first transfersPage
	require.NoError(t, json.Unmarshal(a.mustDo(200, "GET", "/v1/transfers?metadata.order_id=123", ``, root...).Body.Bytes(), &first))
	require.Len(t, first.Transfers, len(all))
	assert.Empty(t, first.Next, "the default limit holds them all")
	assert.Equal(t, "123", first.Transfers[0].Metadata["order_id"])

	// A transfer made by a batch is indexed like any other.
	a.mustDo(200, "POST", "/v1/batch", `{"atomic":false,"operations":[{"type":"transfer","id":"acme-tb","from":"acme-0","to":"acme-1","currency":"USD","amount":1,"metadata":{"batch":"b1"}}]}`, root...)
	assert.Equal(t, []string{"acme-tb"}, pageAll(t, a, "/v1/transfers?metadata.batch=b1", transferPageIDs, acme...))

	t.Run("bad queries", func(t *testing.T) {
		before := a.digest()
		for _, route := range []string{"/v1/transfers", "/v1/accounts"} {
			for _, q := range []string{
				"",                                            // no metadata parameter
				"?limit=5",                                    // still none
				"?metadata.a=1&metadata.b=2",                  // two pairs
				"?metadata.a=1&metadata.a=2",                  // one key twice
				"?metadata.a=1&limit=0",                       // limit 0
				"?metadata.a=1&limit=1001",                    // limit too big
				"?metadata.a=1&limit=-1",                      // negative
				"?metadata.a=1&limit=x",                       // not a number
				"?metadata.a=1&limit=1&limit=2",               // limit twice
				"?metadata.a=1&cursor=%21%21",                 // not a cursor
				"?metadata.a=1&cursor=Ojo",                    // decodes, but not an ID
				"?metadata.a=1&after=x",                       // unknown parameter
				"?metadata.=1",                                // empty key
				"?metadata." + strings.Repeat("k", 65) + "=1", // key too long
				"?metadata.a=" + strings.Repeat("v", 513),     // value too long
				"?metadata.a=%zz",                             // malformed escape
			} {
				requireProblem(t, a.do("GET", route+q, ``, root...), 400, "invalid_request")
			}
		}
		assert.Equal(t, before, a.digest(), "a refused lookup changes nothing")
	})
}
