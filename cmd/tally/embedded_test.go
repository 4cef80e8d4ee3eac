package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestServeEmbeddedExpiresKeys: the embedded Redis of `tally serve` expires keys as a real
// one does (miniredis alone never does): an Idempotency-Key is remembered for
// --idempotency-ttl and then forgotten, so reusing it for another deposit is refused at
// first and applied once the record has expired.
func TestServeEmbeddedExpiresKeys(t *testing.T) {
	base, stop := startServe(t, "--idempotency-ttl", "2s", "--relay=false")
	code, body := post(t, base+"/v1/accounts", `{"id":"alice"}`)
	require.Equal(t, 201, code, body)
	deposit := func(amount string) (int, string) {
		req, err := http.NewRequest("POST", base+"/v1/accounts/alice/deposits", strings.NewReader(`{"currency":"USD","amount":`+amount+`}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "k1")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body = deposit("10")
	require.Equal(t, 201, code, body)
	code, body = deposit("20")
	require.Equal(t, 409, code, "the key is remembered: %s", body)
	require.Eventually(t, func() bool { code, _ := deposit("20"); return code == 201 },
		20*time.Second, 100*time.Millisecond, "the idempotency record expires after --idempotency-ttl")

	resp, err := http.Get(base + "/v1/accounts/alice")
	require.NoError(t, err)
	defer resp.Body.Close()
	var acct struct {
		Balances map[string]struct{ Posted int64 } `json:"balances"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&acct))
	require.Equal(t, int64(30), acct.Balances["USD"].Posted, "both deposits applied, each once")
	require.NoError(t, stop())
}
