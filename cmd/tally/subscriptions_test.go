package main

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// TestWebhookSubsFlags reads webhook subscriptions from the flags and the environment, and
// refuses malformed ones with an error that names the flag and never shows a secret.
func TestWebhookSubsFlags(t *testing.T) {
	env := map[string]string{"HOOK_A": "secret-a", "HOOK_B": "secret-b"}
	getenv := func(k string) string { return env[k] }
	parseFlags := func(t *testing.T, args ...string) *relayFlags {
		t.Helper()
		var f relayFlags
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.register(fs)
		require.NoError(t, parse(fs, args))
		return &f
	}

	t.Run("valid", func(t *testing.T) {
		t.Setenv(envVar("webhook-sub"), "url=http://127.0.0.1:9/c,secret-env=HOOK_B  url=http://127.0.0.1:9/d,secret-env=HOOK_A,prefix=shop2..")
		f := parseFlags(t, "--webhook", "http://127.0.0.1:9/a", "--webhook-secret", "s",
			"--webhook-types", "Deposited, Withdrawn", "--webhook-account-prefix", "shop1..",
			"--webhook-sub", "url=http://127.0.0.1:9/b,secret-env=HOOK_A,types=HoldPlaced|HoldCaptured")
		subs, err := f.webhookSubs(getenv)
		require.NoError(t, err)
		assert.Equal(t, []webhookSub{
			{url: "http://127.0.0.1:9/a", secret: "s", filter: outbox.Filter{Types: []string{"Deposited", "Withdrawn"}, KeyPrefix: "shop1.."}},
			{url: "http://127.0.0.1:9/b", secret: "secret-a", filter: outbox.Filter{Types: []string{"HoldPlaced", "HoldCaptured"}}},
		}, subs, "the command line's --webhook-sub replaces "+envVar("webhook-sub"))

		f = parseFlags(t)
		subs, err = f.webhookSubs(getenv)
		require.NoError(t, err)
		assert.Equal(t, []webhookSub{
			{url: "http://127.0.0.1:9/c", secret: "secret-b"},
			{url: "http://127.0.0.1:9/d", secret: "secret-a", filter: outbox.Filter{KeyPrefix: "shop2.."}},
		}, subs, "several subscriptions in "+envVar("webhook-sub"))
	})

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown type", []string{"--webhook", "http://h/", "--webhook-secret", "s", "--webhook-types", "Deposited,Deposit"},
			`--webhook-types: unknown event type "Deposit"; known types: AccountOpened, Deposited, Withdrawn,`},
		{"filter without webhook", []string{"--webhook-types", "Deposited"}, "--webhook-types and --webhook-account-prefix filter --webhook, which is not given"},
		{"bad prefix", []string{"--webhook", "http://h/", "--webhook-secret", "s", "--webhook-account-prefix", "a b"}, "--webhook-account-prefix: an account-ID prefix"},
		{"sub with unknown type", []string{"--webhook-sub", "url=http://h/,secret-env=HOOK_A,types=Deposited|Nope"}, `types: unknown event type "Nope"; known types:`},
		{"sub without secret", []string{"--webhook-sub", "url=http://h/"}, "url and secret-env are required"},
		{"sub with empty secret", []string{"--webhook-sub", "url=http://h/,secret-env=HOOK_NONE"}, "environment variable HOOK_NONE is empty or not set"},
		{"sub with unknown field", []string{"--webhook-sub", "url=http://h/,secret-env=HOOK_A,kinds=x"}, `unknown field "kinds"`},
		{"sub with repeated field", []string{"--webhook-sub", "url=http://h/,url=http://i/,secret-env=HOOK_A"}, "url is given twice"},
		{"stream filter without stream", []string{"--sink-stream-types", "Deposited"}, "filter --sink-stream, which is not given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := parseFlags(t, tc.args...)
			_, err := f.webhookSubs(getenv)
			if err == nil {
				_, err = f.streamFilter()
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	t.Run("a secret on the command line is refused and not shown", func(t *testing.T) {
		f := parseFlags(t, "--webhook-sub", "url=https://user:pw@hooks.example/x?token=t1,secret=hunter2")
		_, err := f.webhookSubs(getenv)
		require.ErrorContains(t, err, "a secret is never given on the command line")
		for _, leak := range []string{"hunter2", "pw", "t1"} {
			assert.NotContains(t, err.Error(), leak)
		}
		// A query right after the host, with no path: not part of the host either.
		f = parseFlags(t, "--webhook-sub", "url=https://hooks.example?token=t2,secret=hunter2")
		_, err = f.webhookSubs(getenv)
		require.ErrorContains(t, err, "url=https://hooks.example/…")
		assert.NotContains(t, err.Error(), "t2")
	})
}

// hookRecorder is a webhook receiver that checks signatures and records every event it
// is sent, repeats included.
type hookRecorder struct {
	srv    *httptest.Server
	secret string
	mu     sync.Mutex
	events []ledger.Event
	bad    int
}

func startHookRecorder(t *testing.T, secret string) *hookRecorder {
	h := &hookRecorder{secret: secret}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		payloads, err := outbox.DecodeWebhookBody(body)
		if err != nil || !outbox.VerifySignature([]byte(secret), body, r.Header.Get(outbox.WebhookSignatureHeader)) {
			h.bad++
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, raw := range payloads {
			var e ledger.Event
			if err := json.Unmarshal(raw, &e); err != nil {
				h.bad++
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			h.events = append(h.events, e)
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// ids returns the IDs of the events received, repeats included.
func (h *hookRecorder) ids() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, len(h.events))
	for i, e := range h.events {
		out[i] = e.ID
	}
	return out
}

// TestRelayCommandSubscriptions runs `tally relay` with a webhook filtered by event types
// (--webhook), a subscription filtered by account prefix (--webhook-sub) and an unfiltered
// --sink-stream: each webhook receives exactly its events, the stream all of them, nothing
// is dead-lettered, and a restarted relay sends nothing twice.
func TestRelayCommandSubscriptions(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	rdb := srv.Client()
	l, err := ledger.Open(ctx, rdb, ledger.Config{Partitions: 4})
	require.NoError(t, err)
	var all []ledger.Event
	write := func() {
		for _, id := range []string{"shop1..a", "shop1..b", "other"} {
			if _, err := l.Account(ctx, id); err != nil {
				_, err := l.OpenAccount(ctx, ledger.OpenAccount{ID: id}, ledger.WriteOptions{})
				require.NoError(t, err)
			}
			_, err := l.Deposit(ctx, ledger.Deposit{Account: id, Currency: "USD", Amount: 10}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.Withdraw(ctx, ledger.Withdraw{Account: id, Currency: "USD", Amount: 3}, ledger.WriteOptions{})
			require.NoError(t, err)
			_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: id, Currency: "USD", Amount: 1, Timeout: time.Hour})
			require.NoError(t, err)
		}
		all = all[:0]
		for _, id := range []string{"shop1..a", "shop1..b", "other"} {
			evs, _, err := l.Events(ctx, id, 0, ledger.MaxEventsPage)
			require.NoError(t, err)
			all = append(all, evs...)
		}
	}
	wantIDs := func(f outbox.Filter) []string {
		var ids []string
		for _, e := range all {
			if f.Match(outbox.Message{Key: e.Account, Type: e.Type}) {
				ids = append(ids, e.ID)
			}
		}
		return ids
	}
	byType := startHookRecorder(t, "secret-types")
	byPrefix := startHookRecorder(t, "secret-prefix")
	t.Setenv("TEST_HOOK_PREFIX_SECRET", "secret-prefix")
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{Partitions: 4})
	require.NoError(t, err)

	runRelay := func() {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- run(rctx, []string{"relay", "--redis", srv.Addr(), "--partitions", "4", "--projector=false", "--log-level", "warn",
				"--webhook", byType.srv.URL, "--webhook-secret", "secret-types", "--webhook-types", "Deposited,HoldPlaced",
				"--webhook-sub", "url=" + byPrefix.srv.URL + ",secret-env=TEST_HOOK_PREFIX_SECRET,prefix=shop1..",
				"--sink-stream", "subs-test:all"}, io.Discard, io.Discard)
		}()
		defer func() {
			cancel()
			require.NoError(t, <-done)
		}()
		require.Eventually(t, func() bool {
			st, err := admin.Status(ctx)
			require.NoError(t, err)
			for _, p := range st {
				if p.Backlog > 0 {
					return false
				}
			}
			return true
		}, 20*time.Second, 10*time.Millisecond, "the relay acknowledges every event")
	}

	write()
	runRelay()
	write() // more events while no relay runs
	runRelay()

	typeFilter := outbox.Filter{Types: []string{ledger.EventDeposited, ledger.EventHoldPlaced}}
	prefixFilter := outbox.Filter{KeyPrefix: "shop1.."}
	require.Len(t, wantIDs(typeFilter), 12)
	require.Len(t, wantIDs(prefixFilter), 14)
	assert.ElementsMatch(t, wantIDs(typeFilter), byType.ids(), "--webhook-types: exactly these, once each")
	assert.ElementsMatch(t, wantIDs(prefixFilter), byPrefix.ids(), "--webhook-sub prefix=: exactly these, once each")
	assert.Zero(t, byType.bad+byPrefix.bad)
	entries, err := rdb.XLen(ctx, "subs-test:all").Result()
	require.NoError(t, err)
	assert.Equal(t, int64(len(all)), entries, "the unfiltered stream has every event")
	for p := 0; p < 4; p++ {
		assert.Zero(t, rdb.XLen(ctx, outbox.DeadLetterKey("tally", p)).Val(), "dead letters of partition %d", p)
	}
}

// TestServeRefusesUnknownWebhookType: an unknown event type stops serve before it starts,
// with the known types in the error.
func TestServeRefusesUnknownWebhookType(t *testing.T) {
	var stdout, stderr strings.Builder
	err := run(t.Context(), []string{"serve", "--addr", "127.0.0.1:0", "--webhook", "http://127.0.0.1:9/h",
		"--webhook-secret", "s", "--webhook-types", "Deposited,Refunded"}, &stdout, &stderr)
	require.ErrorContains(t, err, `unknown event type "Refunded"; known types: AccountOpened,`)
	assert.Empty(t, stdout.String(), "nothing started")
}
