package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// TestRelayCommandWebhook runs `tally relay` with a webhook sink against a local receiver:
// every committed event arrives, signed, and is applied once by a receiver that dedupes.
func TestRelayCommandWebhook(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	l, err := ledger.Open(ctx, srv.Client(), ledger.Config{})
	require.NoError(t, err)
	const accounts, deposits = 5, 20
	for a := 0; a < accounts; a++ {
		id := string(rune('a' + a))
		_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id}, ledger.WriteOptions{})
		require.NoError(t, err)
		for i := 0; i < deposits; i++ {
			_, err := l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 1}, ledger.WriteOptions{})
			require.NoError(t, err)
		}
	}

	secret := []byte("whsec-test")
	var mu sync.Mutex
	seen := map[string]bool{}
	last := map[string]int64{}
	var badSig, outOfOrder int
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if !outbox.VerifySignature(secret, body, r.Header.Get(outbox.WebhookSignatureHeader)) {
			badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		payloads, err := outbox.DecodeWebhookBody(body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, raw := range payloads {
			var e ledger.Event
			if err := json.Unmarshal(raw, &e); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			if seen[e.ID] {
				continue // a redelivery: the receiver dedupes by event ID
			}
			seen[e.ID] = true
			if e.Version != last[e.Account]+1 {
				outOfOrder++
			}
			last[e.Account] = e.Version
		}
	}))
	defer receiver.Close()

	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(rctx, []string{"relay", "--redis", srv.Addr(), "--webhook", receiver.URL,
			"--webhook-secret", string(secret), "--projector=false", "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == accounts*(deposits+1)
	}, 20*time.Second, 20*time.Millisecond, "every event reaches the webhook")
	cancel()
	require.NoError(t, <-done)
	assert.Zero(t, badSig, "every delivery is signed")
	assert.Zero(t, outOfOrder, "per-account version order")
}

// TestServeWithoutRelayAnswersRelayStatus: `serve --relay=false` still answers GET /v1/relay
// and the dead-letter replay from Redis, and exports the backlog on /metrics: the
// partitions are not consumed, and the events wait as backlog.
func TestServeWithoutRelayAnswersRelayStatus(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	// --insecure-admin: the replay is an admin operation, refused without keys otherwise.
	base, stop := startServe(t, "--redis", srv.Addr(), "--partitions", "4", "--relay=false", "--insecure-admin")
	code, body := post(t, base+"/v1/accounts", `{"id":"alice"}`)
	require.Equal(t, 201, code, body)
	code, body = post(t, base+"/v1/accounts/alice/deposits", `{"currency":"USD","amount":10}`)
	require.Equal(t, 201, code, body)

	var st struct {
		Partitions []handlers.PartitionStatus `json:"partitions"`
	}
	getJSON(t, base+"/v1/relay", &st)
	require.Len(t, st.Partitions, 4)
	var backlog int64
	for _, p := range st.Partitions {
		assert.False(t, p.Consumed, "no relay has consumed partition %d", p.Partition)
		assert.Empty(t, p.Owner)
		backlog += p.Backlog
	}
	assert.Equal(t, int64(2), backlog, "AccountOpened and Deposited wait for a relay")

	rdb := srv.Client()
	require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: outbox.DeadLetterKey("tally", 2), Values: []any{"event", "{}"}}).Err())
	code, body = post(t, base+"/v1/relay/dead-letters/replay", ``)
	require.Equal(t, 200, code, body)
	assert.JSONEq(t, `{"replayed":1}`, body)
	n, err := rdb.XLen(ctx, outbox.StreamKey("tally", 2)).Result()
	require.NoError(t, err)
	assert.Positive(t, n, "the dead letter is back in its outbox")

	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(metrics), `tally_outbox_status_up{group="relay"} 1`)
	assert.Regexp(t, `tally_outbox_backlog\{group="relay",partition="\d"\} [12]`, string(metrics))
	assert.Contains(t, string(metrics), `tally_outbox_consumed{group="relay",partition="0"} 0`)
	require.NoError(t, stop())
}

// getJSON decodes the JSON body of a 200 answer to GET url into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, 200, resp.StatusCode, "%s", body)
	require.NoError(t, json.Unmarshal(body, v))
}

// startRelayProc starts `tally relay` as a child process and returns it with the owner name
// it prints.
func startRelayProc(t *testing.T, bin string, args ...string) (*proc, string) {
	t.Helper()
	p, owner, err := startRelayProcErr(t, bin, args...)
	require.NoError(t, err)
	return p, owner
}

// startRelayProcErr is startRelayProc returning an error instead of failing the test.
func startRelayProcErr(tb testing.TB, bin string, args ...string) (*proc, string, error) {
	return launch(tb, bin, append([]string{"relay", "--log-level", "warn"}, args...), func(line string) (string, bool) {
		if owner, ok := strings.CutPrefix(line, "relay "); ok {
			return strings.TrimSuffix(owner, " running"), true
		}
		return "", false
	})
}

// TestRelaysQuietAndFailover runs one `tally serve` and two `tally relay` processes on one
// real redis-server with no traffic. Once they have split the 16 partitions, Redis sees at
// most 500 commands/s in all and nobody logs a warning; then one relay is SIGKILLed and
// its partitions have live owners again within the lease TTL + 2s.
func TestRelaysQuietAndFailover(t *testing.T) {
	const leaseTTL = 3 * time.Second
	bin := buildTally(t)
	srv := redistest.MustStart(t)
	args := []string{"--redis", srv.Addr(), "--relay-lease-ttl", leaseTTL.String()}
	serve := startProc(t, bin, args...)
	r1, owner1 := startRelayProc(t, bin, args...)
	r2, owner2 := startRelayProc(t, bin, args...)

	var st struct {
		Partitions []handlers.PartitionStatus `json:"partitions"`
	}
	owners := func() map[string]int {
		getJSON(t, serve.base+"/v1/relay", &st)
		out := map[string]int{}
		for _, p := range st.Partitions {
			out[p.Owner]++
		}
		return out
	}
	require.Eventually(t, func() bool {
		o := owners()
		return o[""] == 0 && len(o) == 3 && o[owner1] <= 6 && o[owner2] <= 6
	}, 30*time.Second, 50*time.Millisecond, "serve and the two relays split the 16 partitions")
	var serveOwner string
	for o := range owners() {
		if o != owner1 && o != owner2 {
			serveOwner = o
		}
	}

	rate := srv.CommandRate(5 * time.Second)
	t.Logf("idle, 1 serve + 2 relays, lease TTL %v: %.0f commands/s", leaseTTL, rate)
	assert.LessOrEqual(t, rate, 500.0, "idle relays must leave Redis alone")
	for name, p := range map[string]*proc{"serve": serve, "relay 1": r1, "relay 2": r2} {
		assert.NotRegexp(t, `"level":"(WARN|ERROR)"`, p.logs.String(), "%s logged a warning while idle (JSON: stderr is a pipe)", name)
	}

	require.NoError(t, r1.cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	require.Eventually(t, func() bool {
		o := owners()
		return o[serveOwner]+o[owner2] == len(st.Partitions)
	}, 30*time.Second, 20*time.Millisecond, "the killed relay's partitions are taken over")
	failover := time.Since(killed)
	t.Logf("failover after SIGKILL: %v (lease TTL %v), owners now %v", failover, leaseTTL, owners())
	assert.LessOrEqual(t, failover, leaseTTL+2*time.Second, "partitions move within the lease TTL + 2s")
	serve.stop(t)
	r2.stop(t)
}
