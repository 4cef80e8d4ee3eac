package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// webhookTestReply is how a webhookTestReceiver answers one request.
type webhookTestReply struct {
	status     int    // HTTP status; 0 means 200
	retryAfter string // Retry-After header value, if not empty
	apply      bool   // record the events as applied even though status is not 2xx
	block      bool   // answer nothing until the client gives up
}

// webhookTestReceiver is a webhook consumer on a loopback httptest server. It verifies the
// signature and headers of every request, records the events of every accepted request
// and answers as reply says (nil: 200).
type webhookTestReceiver struct {
	secret []byte
	srv    *httptest.Server
	done   chan struct{}

	mu       sync.Mutex
	reply    func(n int) webhookTestReply // called under mu with the request number (1-based)
	requests int
	applied  []Message // messages of applied requests, with repeats
	problems []string  // signature or format violations
}

// mustStartWebhookReceiver starts a receiver that is stopped when the test ends.
func mustStartWebhookReceiver(t *testing.T, secret []byte, reply func(n int) webhookTestReply) *webhookTestReceiver {
	t.Helper()
	rc := &webhookTestReceiver{secret: secret, reply: reply, done: make(chan struct{})}
	rc.srv = httptest.NewServer(rc) // listens on 127.0.0.1
	t.Cleanup(rc.srv.Close)
	t.Cleanup(func() { close(rc.done) }) // runs first: unblocks blocked handlers
	return rc
}

func (rc *webhookTestReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.requests++
	rep := webhookTestReply{status: http.StatusOK, apply: true}
	if rc.reply != nil {
		rep = rc.reply(rc.requests)
	}
	rc.mu.Unlock()
	if rep.status == 0 {
		rep.status = http.StatusOK
	}
	if rep.block {
		select {
		case <-r.Context().Done():
		case <-rc.done:
		}
		return
	}
	events, problem := rc.check(r, body, err)
	rc.mu.Lock()
	if problem != "" {
		rc.problems = append(rc.problems, problem)
	} else if rep.apply || rep.status/100 == 2 {
		rc.applied = append(rc.applied, events...)
	}
	rc.mu.Unlock()
	if problem != "" {
		http.Error(w, problem, http.StatusUnauthorized)
		return
	}
	if rep.retryAfter != "" {
		w.Header().Set("Retry-After", rep.retryAfter)
	}
	w.WriteHeader(rep.status)
}

// check verifies a request and returns its messages (rebuilt from the payloads, which carry
// the ID as "id"), or a description of what is wrong.
func (rc *webhookTestReceiver) check(r *http.Request, body []byte, readErr error) ([]Message, string) {
	if readErr != nil {
		return nil, "read body: " + readErr.Error()
	}
	if r.Method != http.MethodPost {
		return nil, "method " + r.Method
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return nil, "content type " + ct
	}
	if !VerifySignature(rc.secret, body, r.Header.Get(WebhookSignatureHeader)) {
		return nil, "bad signature"
	}
	payloads, err := DecodeWebhookBody(body)
	if err != nil {
		return nil, err.Error()
	}
	msgs := make([]Message, len(payloads))
	for i, raw := range payloads {
		var p testPayload
		if err := json.Unmarshal(raw, &p); err != nil || p.ID == "" {
			return nil, fmt.Sprintf("payload %d is not a test payload with an id: %s", i, raw)
		}
		msgs[i] = Message{ID: p.ID, Key: p.Account, Seq: p.Version, Type: p.Type, Payload: raw}
	}
	if len(msgs) == 1 {
		if id := r.Header.Get(WebhookEventIDHeader); id != msgs[0].ID {
			return nil, fmt.Sprintf("event ID header %q for message %s", id, msgs[0].ID)
		}
	} else if n := r.Header.Get(WebhookEventCountHeader); n != strconv.Itoa(len(msgs)) {
		return nil, fmt.Sprintf("event count header %q for %d messages", n, len(msgs))
	}
	return msgs, ""
}

func (rc *webhookTestReceiver) url() string { return rc.srv.URL + "/hooks/tally" }

func (rc *webhookTestReceiver) requestCount() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.requests
}

// appliedRaw returns the applied messages with repeats; deduped without.
func (rc *webhookTestReceiver) appliedRaw() []Message {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Message(nil), rc.applied...)
}

func (rc *webhookTestReceiver) deduped() []Message { return sinkDedupByID(rc.appliedRaw()) }

func (rc *webhookTestReceiver) problemList() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.problems...)
}

// fastWebhookConfig returns a config for rc with millisecond backoff.
func fastWebhookConfig(rc *webhookTestReceiver) WebhookSinkConfig {
	return WebhookSinkConfig{
		URL:        rc.url(),
		Secret:     rc.secret,
		Timeout:    5 * time.Second,
		MinBackoff: time.Millisecond,
		MaxBackoff: 5 * time.Millisecond,
	}
}

func mustNewWebhookSink(t *testing.T, cfg WebhookSinkConfig) *WebhookSink {
	t.Helper()
	s, err := NewWebhookSink(cfg)
	require.NoError(t, err)
	return s
}

func TestWebhookSinkContract(t *testing.T) {
	t.Parallel()
	runSinkContract(t, func(t *testing.T) (Sink, func() []Message) {
		rc := mustStartWebhookReceiver(t, []byte("contract-secret"), nil)
		cfg := fastWebhookConfig(rc)
		cfg.BatchSize = 7 // batches split into several requests, the last one possibly single
		t.Cleanup(func() { require.Empty(t, rc.problemList()) })
		return mustNewWebhookSink(t, cfg), rc.deduped
	})
}

func TestWebhookSignature(t *testing.T) {
	t.Parallel()
	t.Run("KnownVector", func(t *testing.T) {
		// HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
		const want = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
		body := []byte("The quick brown fox jumps over the lazy dog")
		require.Equal(t, want, WebhookSignature([]byte("key"), body))
		require.True(t, VerifySignature([]byte("key"), body, want))
	})

	t.Run("RejectsTamperingAndMalformedHeaders", func(t *testing.T) {
		secret := []byte("s3cret")
		body := []byte(`{"id":"a:1"}`)
		sig := WebhookSignature(secret, body)
		require.Regexp(t, regexp.MustCompile(`^sha256=[0-9a-f]{64}$`), sig)
		require.True(t, VerifySignature(secret, body, sig))
		require.False(t, VerifySignature(secret, []byte(`{"id":"a:2"}`), sig), "tampered body")
		require.False(t, VerifySignature([]byte("other"), body, sig), "other secret")
		require.False(t, VerifySignature(nil, body, WebhookSignature(nil, body)), "empty secret")
		require.False(t, VerifySignature(secret, body, sig[len("sha256="):]), "no prefix")
		require.False(t, VerifySignature(secret, body, "sha1="+sig[len("sha256="):]), "other prefix")
		require.False(t, VerifySignature(secret, body, "sha256=zz"), "not hex")
		require.False(t, VerifySignature(secret, body, sig[:len(sig)-2]), "truncated")
		require.False(t, VerifySignature(secret, body, ""), "empty header")
	})

	t.Run("RequestsAreSigned", func(t *testing.T) {
		secret := []byte("request-secret")
		var bodies [][]byte
		var sigs []string
		var mu sync.Mutex
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies, sigs = append(bodies, b), append(sigs, r.Header.Get(WebhookSignatureHeader))
			mu.Unlock()
		}))
		t.Cleanup(srv.Close)
		sink := mustNewWebhookSink(t, WebhookSinkConfig{URL: srv.URL, Secret: secret, BatchSize: 2})
		msgs := sinkTestMessages(1, 3, 0)
		require.NoError(t, sink.Deliver(context.Background(), msgs)) // a batch of 2, then 1

		mu.Lock()
		defer mu.Unlock()
		require.Len(t, bodies, 2)
		for i := range bodies {
			require.True(t, VerifySignature(secret, bodies[i], sigs[i]))
			tampered := append([]byte(nil), bodies[i]...)
			tampered[len(tampered)/2] ^= 1
			require.False(t, VerifySignature(secret, tampered, sigs[i]))
		}
		var batch map[string][]map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(bodies[0], &batch))
		require.Len(t, batch["events"], 2)
		var single map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(bodies[1], &single))
		for _, f := range []string{"id", "type", "account", "version", "time", "data"} {
			require.Contains(t, single, f)
			require.Contains(t, batch["events"][0], f)
		}
		require.JSONEq(t, `"`+msgs[2].ID+`"`, string(single["id"]))
		// The payloads travel unchanged: the bodies are byte for byte the payloads.
		require.Equal(t, `{"events":[`+string(msgs[0].Payload)+`,`+string(msgs[1].Payload)+`]}`, string(bodies[0]))
		require.Equal(t, string(msgs[2].Payload), string(bodies[1]))
	})
}

func TestWebhookSinkRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	secret := []byte("retry-secret")
	msgs := sinkTestMessages(2, 2, 0)

	// failFirst answers the first request with rep and every later one with 200.
	failFirst := func(rep webhookTestReply) func(int) webhookTestReply {
		return func(n int) webhookTestReply {
			if n == 1 {
				return rep
			}
			return webhookTestReply{apply: true}
		}
	}

	t.Run("500ThenOK", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, failFirst(webhookTestReply{status: 500}))
		require.NoError(t, mustNewWebhookSink(t, fastWebhookConfig(rc)).Deliver(ctx, msgs))
		require.Equal(t, 2, rc.requestCount())
		requireSameMessages(t, msgs, rc.deduped())
		require.Empty(t, rc.problemList())
	})

	t.Run("429RetryAfter0", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, failFirst(webhookTestReply{status: 429, retryAfter: "0"}))
		require.NoError(t, mustNewWebhookSink(t, fastWebhookConfig(rc)).Deliver(ctx, msgs))
		require.Equal(t, 2, rc.requestCount())
		requireSameMessages(t, msgs, rc.deduped())
	})

	t.Run("429RetryAfter1", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, failFirst(webhookTestReply{status: 429, retryAfter: "1"}))
		start := time.Now()
		require.NoError(t, mustNewWebhookSink(t, fastWebhookConfig(rc)).Deliver(ctx, msgs))
		require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "Retry-After: 1 replaces the 1–5ms backoff")
		require.Equal(t, 2, rc.requestCount())
	})

	t.Run("RetryAfterCapped", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, failFirst(webhookTestReply{status: 503, retryAfter: "3600"}))
		cfg := fastWebhookConfig(rc)
		cfg.MaxRetryAfter = 10 * time.Millisecond
		start := time.Now()
		require.NoError(t, mustNewWebhookSink(t, cfg).Deliver(ctx, msgs))
		require.Less(t, time.Since(start), 5*time.Second)
		require.Equal(t, 2, rc.requestCount())
	})

	t.Run("400IsPermanent", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, func(int) webhookTestReply { return webhookTestReply{status: 400} })
		err := mustNewWebhookSink(t, fastWebhookConfig(rc)).Deliver(ctx, msgs)
		require.ErrorIs(t, err, ErrPermanent)
		var se *WebhookStatusError
		require.ErrorAs(t, err, &se)
		require.Equal(t, 400, se.StatusCode)
		require.Equal(t, 1, rc.requestCount(), "a 4xx other than 429 is not retried")
		require.Empty(t, rc.deduped())
	})

	t.Run("5xxExhaustsAttempts", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, func(int) webhookTestReply { return webhookTestReply{status: 503} })
		cfg := fastWebhookConfig(rc)
		cfg.MaxAttempts = 4
		err := mustNewWebhookSink(t, cfg).Deliver(ctx, msgs)
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrPermanent)
		var se *WebhookStatusError
		require.ErrorAs(t, err, &se)
		require.Equal(t, 503, se.StatusCode)
		require.Equal(t, 4, rc.requestCount())
	})

	t.Run("TimeoutIsRetriedNotPermanent", func(t *testing.T) {
		t.Parallel()
		rc := mustStartWebhookReceiver(t, secret, func(int) webhookTestReply { return webhookTestReply{block: true} })
		cfg := fastWebhookConfig(rc)
		cfg.Timeout = 100 * time.Millisecond
		cfg.MaxAttempts = 2
		err := mustNewWebhookSink(t, cfg).Deliver(ctx, msgs)
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrPermanent)
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout(), "error %v is a timeout", err)
		require.Equal(t, 2, rc.requestCount())
	})

	t.Run("NetworkErrorIsNotPermanent", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close() // connections are refused from now on
		err := mustNewWebhookSink(t, WebhookSinkConfig{URL: url, Secret: secret, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}).Deliver(ctx, msgs)
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrPermanent)
		require.Contains(t, err.Error(), "3 attempts failed")
	})

	t.Run("CancelDuringBackoff", func(t *testing.T) {
		t.Parallel()
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		rc := mustStartWebhookReceiver(t, secret, func(int) webhookTestReply {
			cancel() // the caller gives up while the sink waits to retry
			return webhookTestReply{status: 500}
		})
		cfg := fastWebhookConfig(rc)
		cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
		start := time.Now()
		err := mustNewWebhookSink(t, cfg).Deliver(cctx, msgs)
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(start), 5*time.Second)
		require.Equal(t, 1, rc.requestCount())
	})
}

func TestWebhookSinkFlakyServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(2025, 7)) // used under the receiver's lock
	rc := mustStartWebhookReceiver(t, []byte("flaky-secret"), func(int) webhookTestReply {
		if rnd.Float64() < 0.3 {
			// Half of the failures happen after the consumer applied the events (a lost
			// answer), so the receiver sees repeats.
			return webhookTestReply{status: 500, apply: rnd.IntN(2) == 0}
		}
		return webhookTestReply{apply: true}
	})
	cfg := fastWebhookConfig(rc)
	cfg.BatchSize = 10
	sink := mustNewWebhookSink(t, cfg)

	msgs := sinkTestMessages(5, 100, 0) // 500 events
	deliveries, failures := 0, 0
	for start := 0; start < len(msgs); start += 25 {
		batch := msgs[start:min(start+25, len(msgs))]
		for {
			deliveries++
			err := sink.Deliver(ctx, batch)
			if err == nil {
				break
			}
			require.NotErrorIs(t, err, ErrPermanent)
			failures++
			require.Less(t, failures, 200, "the sink keeps failing: %v", err)
		}
	}
	require.Empty(t, rc.problemList(), "every request's signature and headers verified")
	raw := rc.appliedRaw()
	got := rc.deduped()
	t.Logf("%d Deliver calls (%d failed), %d requests, %d events received for %d distinct", deliveries, failures, rc.requestCount(), len(raw), len(got))
	require.Greater(t, len(raw), len(msgs), "the seeded failures produce repeats")
	// Each message at least once, nothing else, and first occurrences in delivery order.
	requireSameMessages(t, msgs, got)
}

func TestWebhookSinkConfig(t *testing.T) {
	t.Parallel()
	valid := WebhookSinkConfig{URL: "https://example.com/hook", Secret: []byte("k")}
	require.NoError(t, valid.Validate())

	for name, mutate := range map[string]func(*WebhookSinkConfig){
		"NoURL":          func(c *WebhookSinkConfig) { c.URL = "" },
		"RelativeURL":    func(c *WebhookSinkConfig) { c.URL = "/hook" },
		"OtherScheme":    func(c *WebhookSinkConfig) { c.URL = "ftp://example.com/hook" },
		"NoHost":         func(c *WebhookSinkConfig) { c.URL = "http:///hook" },
		"BadURL":         func(c *WebhookSinkConfig) { c.URL = "http://exa mple.com/%zz" },
		"NoSecret":       func(c *WebhookSinkConfig) { c.Secret = nil },
		"NegativeTime":   func(c *WebhookSinkConfig) { c.Timeout = -time.Second },
		"NegativeTries":  func(c *WebhookSinkConfig) { c.MaxAttempts = -1 },
		"NegativeBatch":  func(c *WebhookSinkConfig) { c.BatchSize = -1 },
		"BackoffInverse": func(c *WebhookSinkConfig) { c.MinBackoff = 2 * time.Second },
	} {
		t.Run(name, func(t *testing.T) {
			c := valid
			mutate(&c)
			require.Error(t, c.Validate())
			_, err := NewWebhookSink(c)
			require.Error(t, err)
			require.Contains(t, err.Error(), "outbox: webhook config: ")
		})
	}

	t.Run("Defaults", func(t *testing.T) {
		s := mustNewWebhookSink(t, valid)
		require.Equal(t, 5*time.Second, s.cfg.Timeout)
		require.Equal(t, 3, s.cfg.MaxAttempts)
		require.Equal(t, 100, s.cfg.BatchSize)
		require.Equal(t, 5*time.Second, s.cfg.Client.Timeout)
		for attempt := 1; attempt <= 10; attempt++ {
			d := s.backoff(attempt)
			require.GreaterOrEqual(t, d, 25*time.Millisecond)
			require.LessOrEqual(t, d, time.Second)
		}
	})

	t.Run("DecodeRejectsGarbage", func(t *testing.T) {
		for _, body := range []string{`not json`, `[1,2]`, `"x"`, `null`, `{"events":{}}`, `{"events":null}`, `{"events":[1,}`} {
			_, err := DecodeWebhookBody([]byte(body))
			require.Error(t, err, "body %s", body)
		}
		ps, err := DecodeWebhookBody([]byte(`{"events":[]}`))
		require.NoError(t, err)
		require.Empty(t, ps)
		ps, err = DecodeWebhookBody([]byte(`{"events":[{"id":"a:1"}, {"id":"a:2"}]}`))
		require.NoError(t, err)
		require.Equal(t, []json.RawMessage{json.RawMessage(`{"id":"a:1"}`), json.RawMessage(`{"id":"a:2"}`)}, ps)
		ps, err = DecodeWebhookBody([]byte(`{"foo":1}`))
		require.NoError(t, err, "any object without \"events\" is one payload: the outbox does not know its schema")
		require.Equal(t, []json.RawMessage{json.RawMessage(`{"foo":1}`)}, ps)
	})

	t.Run("EncodeForwardsPayloadsUnchanged", func(t *testing.T) {
		a := Message{ID: "a:1", Payload: json.RawMessage(`{"id":"a:1", "spaced": true,"html":"<&>"}`)}
		b := Message{ID: "a:2", Payload: json.RawMessage(`{"id":"a:2"}`)}
		body, err := EncodeWebhookBody([]Message{a})
		require.NoError(t, err)
		require.Equal(t, string(a.Payload), string(body))
		body, err = EncodeWebhookBody([]Message{a, b})
		require.NoError(t, err)
		require.Equal(t, `{"events":[`+string(a.Payload)+`,`+string(b.Payload)+`]}`, string(body))
		body, err = EncodeWebhookBody(nil)
		require.NoError(t, err)
		require.Equal(t, `{"events":[]}`, string(body))
	})

	t.Run("UnencodableEventIsPermanent", func(t *testing.T) {
		rc := mustStartWebhookReceiver(t, []byte("k"), nil)
		msgs := sinkTestMessages(1, 1, 0)
		msgs[0].Payload = json.RawMessage(`{not json`)
		err := mustNewWebhookSink(t, fastWebhookConfig(rc)).Deliver(context.Background(), msgs)
		require.ErrorIs(t, err, ErrPermanent)
		require.Zero(t, rc.requestCount())
		require.False(t, errors.Is(err, context.Canceled))
	})
}
