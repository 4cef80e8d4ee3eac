package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// testServer is the real API (handlers over a ledger on a real redis-server) behind
// httptest.
type testServer struct {
	URL string
	l   *ledger.Ledger
}

// startServer starts the API over a fresh Redis. wrap, when not nil, wraps the ledger the
// handlers see (a test that needs an answer the real ledger gives too rarely to provoke).
func startServer(t *testing.T, cfg handlers.Config, wrap func(*ledger.Ledger) handlers.Ledger) *testServer {
	t.Helper()
	rdb := redistest.MustStart(t).Client()
	l, err := ledger.Open(context.Background(), rdb, ledger.Config{Partitions: 4})
	require.NoError(t, err)
	if cfg.Relay == nil {
		admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{Partitions: 4})
		require.NoError(t, err)
		cfg.Relay = relayAdmin{admin}
	}
	var hl handlers.Ledger = l
	if wrap != nil {
		hl = wrap(l)
	}
	h, err := handlers.New(hl, cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &testServer{URL: srv.URL, l: l}
}

// relayAdmin adapts *outbox.Admin to handlers.Relay, as cmd/tally does.
type relayAdmin struct{ a *outbox.Admin }

func (r relayAdmin) Status(ctx context.Context) ([]handlers.PartitionStatus, error) {
	st, err := r.a.Status(ctx)
	out := make([]handlers.PartitionStatus, len(st))
	for i, p := range st {
		out[i] = handlers.PartitionStatus(p)
	}
	return out, err
}

func (r relayAdmin) ReplayDeadLetters(ctx context.Context) (int, error) {
	return r.a.ReplayDeadLetters(ctx)
}

// otherPartition returns the first ID prefix0, prefix1, ... outside id's partition.
func (s *testServer) otherPartition(t *testing.T, id, prefix string) string {
	t.Helper()
	for i := range 1000 {
		other := fmt.Sprintf("%s%d", prefix, i)
		if s.l.Partition(other) != s.l.Partition(id) {
			return other
		}
	}
	t.Fatalf("no ID with prefix %q outside the partition of %q", prefix, id)
	return ""
}

// waits records the delays a client asked to wait, without spending them.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) all() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.d...)
}

// newClient returns a client of url with its own connection pool and fast retries; the
// delays it waits are recorded in the returned waits and cut to at most 1ms, so tests with
// Retry-After: 1 stay fast while they can still check what was asked for.
func newClient(t *testing.T, url string, opts ...Option) (*Client, *waits) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	opts = append([]Option{
		WithHTTPClient(&http.Client{Transport: tr, Timeout: 20 * time.Second}),
		WithRetry(RetryPolicy{MaxAttempts: 5, BaseDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond}),
	}, opts...)
	c, err := New(url, opts...)
	require.NoError(t, err)
	w := &waits{}
	c.wait = func(ctx context.Context, d time.Duration) error {
		w.mu.Lock()
		w.d = append(w.d, d)
		w.mu.Unlock()
		return backoff.Wait(ctx, min(d, time.Millisecond))
	}
	return c, w
}

// Faults the proxy injects.
type fault int

const (
	pass         fault = iota
	refuse503          // answer 503 store_unavailable (Retry-After: 1) without forwarding
	refuse429          // answer 429 rate_limited (Retry-After: 1) without forwarding
	dropBefore         // close the connection without forwarding
	dropAfter          // forward (the server applies it), then close the connection unanswered
	fail503After       // forward, then answer 503 instead of the server's answer
	numFaults
)

var faultNames = [...]string{"pass", "refuse503", "refuse429", "dropBefore", "dropAfter", "fail503After"}

func (f fault) String() string { return faultNames[f] }

// hit is one request the proxy saw.
type hit struct {
	method, path, key string
	fault             fault
}

// proxy stands between a client and the real server and injects faults. decide picks the
// fault of each request from the request and n, how many requests with its
// Idempotency-Key (or, without one, its method and path) came before it.
type proxy struct {
	URL    string
	target *url.URL
	tr     *http.Transport
	decide func(r *http.Request, n int) fault
	onHit  func(hit) // optional: called for every request before it is handled
	// retryAfter is the Retry-After of injected 503 and 429 answers; "1" unless set.
	retryAfter string

	mu   sync.Mutex
	hits []hit
	seen map[string]int
}

// startProxy starts a proxy to target.
func startProxy(t *testing.T, target string, decide func(r *http.Request, n int) fault) *proxy {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	p := &proxy{target: u, tr: &http.Transport{}, decide: decide, seen: map[string]int{}}
	t.Cleanup(p.tr.CloseIdleConnections)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// Hits returns the requests seen so far.
func (p *proxy) Hits() []hit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]hit(nil), p.hits...)
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		drop(w)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	id := key
	if id == "" {
		id = r.Method + " " + r.URL.Path
	}
	p.mu.Lock()
	n := p.seen[id]
	p.seen[id]++
	f := p.decide(r, n)
	h := hit{method: r.Method, path: r.URL.Path, key: key, fault: f}
	p.hits = append(p.hits, h)
	p.mu.Unlock()
	if p.onHit != nil {
		p.onHit(h)
	}

	switch f {
	case refuse503:
		writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", p.retryAfter)
		return
	case refuse429:
		writeProblem(w, http.StatusTooManyRequests, "rate_limited", p.retryAfter)
		return
	case dropBefore:
		drop(w)
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target.String()+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		drop(w)
		return
	}
	out.Header = r.Header.Clone()
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		drop(w)
		return
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		drop(w)
		return
	}
	switch f {
	case dropAfter:
		drop(w)
		return
	case fail503After:
		writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", p.retryAfter)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

// writeProblem writes a problem+json answer with Retry-After (default "1", as the API
// sends with its 503s).
func writeProblem(w http.ResponseWriter, status int, code, retryAfter string) {
	if retryAfter == "" {
		retryAfter = "1"
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Retry-After", retryAfter)
	w.Header().Set("X-Request-ID", "proxy-req")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"type":"https://tally.dev/problems/%s","title":"injected","status":%d,"detail":"injected by the test proxy","code":%q}`, code, status, code)
}

// drop closes the client's connection without an answer.
func drop(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // closes the connection too
	}
	_ = conn.Close()
}
