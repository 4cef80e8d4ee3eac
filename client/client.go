// Package client is a typed Go client for Tally's HTTP API (v1).
//
// Every method takes a context first and maps one API operation. Writes carry an
// Idempotency-Key — generated per call (128 random bits) unless the caller names one with
// WithIdempotencyKey, or the transfer or hold has an ID of its own — and the same key is sent
// on every retry of that call, so a retry never applies twice. Calls are retried with
// jittered exponential backoff on 429, 502, 503 and 504 (honouring Retry-After) and on
// transport errors (connection refused or reset, timeouts), never on other answers.
//
// Failed answers are *Error values decoded from problem+json; branch on them with errors.Is
// and the sentinels (ErrInsufficientFunds, ErrAccountNotFound, ...) or read their fields
// with errors.As:
//
//	c, err := client.New("http://127.0.0.1:8080", client.WithAPIKey(key))
//	...
//	_, err = c.Withdraw(ctx, "alice", "USD", 5000)
//	if errors.Is(err, client.ErrInsufficientFunds) {
//		// nothing was written
//	}
//
// Money is int64 minor units everywhere; the package never uses floats for it. It does not
// import the server's packages.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tally-ledger/tally/internal/backoff"
)

// DefaultUserAgent is the User-Agent header sent unless WithUserAgent sets another.
const DefaultUserAgent = "tally-go-client/1"

// maxResponseBytes bounds how much of one answer the client reads, so a broken or hostile
// server cannot make it allocate without bound. The largest regular answers (an events page
// of 1000 events, a batch of 1000 results) are well below it.
const maxResponseBytes = 32 << 20

// RetryPolicy says how a call is retried after a retryable failure (429, 502, 503, 504, or
// a transport error).
type RetryPolicy struct {
	// MaxAttempts is the number of tries of one call, the first included. 1 turns retries
	// off. Default 4.
	MaxAttempts int
	// BaseDelay is the delay before the first retry; it doubles per retry up to MaxDelay,
	// with jitter (at least half of it). Defaults 100ms and 2s.
	BaseDelay, MaxDelay time.Duration
	// MaxRetryAfter caps how long the client waits when an answer carries Retry-After: a
	// longer Retry-After ends the call with that answer's *Error (its RetryAfter field says
	// how long the server asked for). Default 30s.
	MaxRetryAfter time.Duration
}

// defaultRetry is the policy of a client created without WithRetry (a value, never
// changed).
var defaultRetry = RetryPolicy{MaxAttempts: 4, BaseDelay: 100 * time.Millisecond, MaxDelay: 2 * time.Second, MaxRetryAfter: 30 * time.Second}

// validate returns an error for a policy New refuses.
func (p RetryPolicy) validate() error {
	switch {
	case p.MaxAttempts < 1:
		return fmt.Errorf("client: retry policy: MaxAttempts %d < 1", p.MaxAttempts)
	case p.BaseDelay < 0 || p.MaxDelay < p.BaseDelay:
		return fmt.Errorf("client: retry policy: need 0 <= BaseDelay (%v) <= MaxDelay (%v)", p.BaseDelay, p.MaxDelay)
	case p.MaxRetryAfter < 0:
		return fmt.Errorf("client: retry policy: MaxRetryAfter %v < 0", p.MaxRetryAfter)
	}
	return nil
}

// Client calls one Tally API. It is safe for concurrent use.
type Client struct {
	base      string // scheme://host[:port][/prefix], without a trailing slash
	http      *http.Client
	apiKey    string
	userAgent string
	retry     RetryPolicy
	backoff   backoff.Policy
	// wait waits d or until ctx ends (backoff.Wait); tests replace it to record delays
	// without spending them.
	wait func(ctx context.Context, d time.Duration) error
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the *http.Client requests go through (timeouts, transport, proxies).
// Default: a client with a 30s timeout per attempt.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithAPIKey sends key as "Authorization: Bearer <key>" on every request.
func WithAPIKey(key string) Option { return func(c *Client) { c.apiKey = key } }

// WithRetry sets the retry policy; zero fields take the defaults (4 attempts, delays from
// 100ms up to 2s, Retry-After up to 30s).
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) {
		d := defaultRetry
		if p.MaxAttempts == 0 {
			p.MaxAttempts = d.MaxAttempts
		}
		if p.BaseDelay == 0 {
			p.BaseDelay = d.BaseDelay
		}
		if p.MaxDelay == 0 {
			p.MaxDelay = max(d.MaxDelay, p.BaseDelay)
		}
		if p.MaxRetryAfter == 0 {
			p.MaxRetryAfter = d.MaxRetryAfter
		}
		c.retry = p
	}
}

// WithUserAgent sets the User-Agent header (default DefaultUserAgent).
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client of the API at baseURL (for example "http://127.0.0.1:8080"), or an
// error for a URL that is not absolute http(s) or an invalid retry policy.
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q must be an absolute http or https URL", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("client: base URL %q must not have a query or fragment", baseURL)
	}
	c := &Client{
		base:      strings.TrimRight(u.String(), "/"),
		http:      &http.Client{Timeout: 30 * time.Second},
		userAgent: DefaultUserAgent,
		retry:     defaultRetry,
		wait:      backoff.Wait,
	}
	for _, o := range opts {
		o(c)
	}
	if c.http == nil {
		return nil, errors.New("client: nil HTTP client")
	}
	if err := c.retry.validate(); err != nil {
		return nil, err
	}
	c.backoff = backoff.Policy{Base: c.retry.BaseDelay, Max: c.retry.MaxDelay, Jitter: 0.5}
	return c, nil
}

// CallOption changes one call.
type CallOption func(*call)

// call is one API call as its options shape it.
type call struct {
	key   string // Idempotency-Key
	noKey bool   // send none (WithoutIdempotencyKey)
}

// WithIdempotencyKey sends key as the call's Idempotency-Key instead of a generated one
// (1–255 printable ASCII characters, no spaces). Reuse a key to retry a write yourself —
// across processes or restarts — without applying it twice. Read-only calls ignore it.
func WithIdempotencyKey(key string) CallOption { return func(c *call) { c.key = key } }

// WithoutIdempotencyKey sends a write without an Idempotency-Key, and the client then never
// retries it: a second attempt could apply it twice. It is for load tests that compare with
// generators sending none (tally bench); keep the default elsewhere. A transfer's or hold's
// ID still names it (and is its key on the server), and WithIdempotencyKey wins over it.
func WithoutIdempotencyKey() CallOption { return func(c *call) { c.noKey = true } }

// writeKey returns the Idempotency-Key of a write: the caller's, else fallback (a
// transfer's or hold's own ID), else none with WithoutIdempotencyKey, else a new random key.
func writeKey(opts []CallOption, fallback string) string {
	var cl call
	for _, o := range opts {
		o(&cl)
	}
	switch {
	case cl.key != "":
		return cl.key
	case fallback != "":
		return fallback
	case cl.noKey:
		return ""
	default:
		return NewIdempotencyKey()
	}
}

// NewIdempotencyKey returns a random key of 128 bits as 32 hex digits (also a valid
// transfer or hold ID). It is what writes send when the caller names no key.
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// request is one API request, sent as many times as the retry policy allows.
type request struct {
	method string
	path   string     // starts with "/"; its segments already escaped
	query  url.Values // nil: none
	body   any        // marshalled once; nil: no body
	key    string     // Idempotency-Key; "" for reads and writes sent without one
	once   bool       // no retries (readiness probe)
	// repeatable: a write the server makes harmless to repeat without a key (dead-letter
	// replay); other writes without a key are never retried.
	repeatable bool
}

// response is a successful (2xx) answer.
type response struct {
	status int
	body   []byte
}

// do sends r, retrying per the policy, and decodes a 2xx body into out (unless out is nil).
// It returns an *Error for an answer other than 2xx, or the transport or context error that
// ended the call.
func (c *Client) do(ctx context.Context, r request, out any) error {
	var payload []byte
	if r.body != nil {
		var err error
		if payload, err = json.Marshal(r.body); err != nil {
			return fmt.Errorf("client: encode %s %s: %w", r.method, r.path, err)
		}
	}
	target := c.base + r.path
	if len(r.query) > 0 {
		target += "?" + r.query.Encode()
	}
	for attempt := 1; ; attempt++ {
		resp, err := c.send(ctx, r, target, payload)
		if err == nil {
			if out != nil && len(resp.body) > 0 {
				if err := json.Unmarshal(resp.body, out); err != nil {
					return fmt.Errorf("client: decode answer of %s %s (%d): %w", r.method, r.path, resp.status, err)
				}
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctxError(ctx, err)
		}
		delay, retry := c.retryDelay(err, attempt)
		// A write without a key is never sent twice: the first may have been applied.
		unkeyedWrite := r.key == "" && r.method != http.MethodGet && !r.repeatable
		if !retry || r.once || unkeyedWrite || attempt >= c.retry.MaxAttempts {
			return err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return err // the next attempt could not start in time: say what failed
		}
		if werr := c.wait(ctx, delay); werr != nil {
			return ctxError(ctx, err)
		}
	}
}

// ctxError is the error of a call whose context ended: it wraps both ctx's error and what
// the last attempt got, so errors.Is matches context.Canceled (or DeadlineExceeded) and,
// say, ErrOverloaded.
func ctxError(ctx context.Context, last error) error {
	cause := context.Cause(ctx)
	if errors.Is(last, cause) || errors.Is(last, ctx.Err()) {
		return last
	}
	return fmt.Errorf("%w (last attempt: %w)", cause, last)
}

// retryDelay says whether err is worth another attempt and how long to wait first.
func (c *Client) retryDelay(err error, attempt int) (time.Duration, bool) {
	delay := c.backoff.Delay(attempt)
	var apiErr *Error
	if !errors.As(err, &apiErr) {
		return delay, retryableTransport(err)
	}
	switch apiErr.Status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
	default:
		return 0, false
	}
	if apiErr.RetryAfter > c.retry.MaxRetryAfter {
		return 0, false
	}
	return max(delay, apiErr.RetryAfter), true
}

// retryableTransport reports whether a transport error may pass on another attempt: all do
// (refused, reset, EOF, timeouts) except a certificate the client does not trust, which
// will not change by itself.
func retryableTransport(err error) bool {
	var certErr *tls.CertificateVerificationError
	return !errors.As(err, &certErr)
}

// send makes one attempt: a 2xx answer, or an *Error for another answer, or a transport
// error (wrapped with the method and path).
func (c *Client) send(ctx context.Context, r request, target string, payload []byte) (response, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, target, body)
	if err != nil {
		return response{}, fmt.Errorf("client: %s %s: %w", r.method, r.path, err)
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", c.userAgent)
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.key != "" {
		req.Header.Set("Idempotency-Key", r.key)
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("client: %s %s: %w", r.method, r.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		// The connection broke mid-answer: the outcome is unknown, like a reset before it.
		return response{}, fmt.Errorf("client: %s %s: read answer: %w", r.method, r.path, err)
	}
	if len(data) > maxResponseBytes {
		return response{}, fmt.Errorf("client: %s %s: answer larger than %d bytes", r.method, r.path, maxResponseBytes)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return response{status: resp.StatusCode, body: data}, nil
	}
	return response{}, newError(resp, data)
}

// escape returns path segments joined with "/", each escaped.
func escape(segments ...string) string {
	var b strings.Builder
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}
