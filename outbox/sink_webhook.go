package outbox

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tally-ledger/tally/internal/backoff"
)

// Headers of a webhook request. Every request carries Content-Type: application/json and
// the signature; a request with one message also carries its ID, a request with several the
// number of messages. (The names say "event": every payload Tally sends is a ledger event.)
const (
	// WebhookSignatureHeader holds "sha256=" + lowercase hex HMAC-SHA256(secret, body).
	WebhookSignatureHeader = "Tally-Signature"
	// WebhookEventIDHeader holds the message ID (Message.ID, the ledger's event ID) of a
	// single-message request.
	WebhookEventIDHeader = "Tally-Event-Id"
	// WebhookEventCountHeader holds the number of messages of a batch request.
	WebhookEventCountHeader = "Tally-Event-Count"
)

// webhookSignaturePrefix precedes the hex HMAC in WebhookSignatureHeader.
const webhookSignaturePrefix = "sha256="

// webhookMaxDrain bounds how much of a response body is read (to reuse the connection), and
// webhookMaxErrBody how much of it is kept in a WebhookStatusError.
const (
	webhookMaxDrain   = 64 << 10
	webhookMaxErrBody = 512
)

// WebhookSinkConfig configures a WebhookSink. Zero values of optional fields mean their
// defaults.
type WebhookSinkConfig struct {
	// URL is the absolute http:// or https:// URL that payloads are POSTed to. Required.
	URL string
	// Secret is the HMAC-SHA256 key that signs every request body. Required.
	Secret []byte
	// Timeout bounds one HTTP attempt, from connecting to reading the response.
	// Default 5s.
	Timeout time.Duration
	// MaxAttempts is how many times one request is tried within a single Deliver call
	// before Deliver returns the last error (the relay retries later). Default 3.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the jittered exponential wait between attempts: the
	// n-th wait is drawn from [d/2, d] with d = min(MaxBackoff, MinBackoff·2^(n-1)).
	// Defaults 50ms and 1s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxRetryAfter caps the wait that a retryable response (429 or 5xx) asks for with a
	// Retry-After header in seconds; the header replaces the backoff for that attempt.
	// Default 5s.
	MaxRetryAfter time.Duration
	// BatchSize is the most messages sent in one request. A request with one message has
	// its payload as the JSON body; a request with several has {"events":[payload,...]}.
	// Default 100; 1 sends every message alone.
	BatchSize int
	// Client sends the requests. Nil means a client whose Timeout is Timeout. Timeout
	// also applies, through the request context, to a client passed here.
	Client *http.Client
}

// withDefaults returns c with every unset optional field set to its default.
func (c WebhookSinkConfig) withDefaults() WebhookSinkConfig {
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 50 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = time.Second
	}
	if c.MaxRetryAfter == 0 {
		c.MaxRetryAfter = 5 * time.Second
	}
	if c.BatchSize == 0 {
		c.BatchSize = 100
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: c.Timeout}
	}
	return c
}

// Validate returns an error when URL is not an absolute http or https URL with a host,
// Secret is empty, a duration or count is negative, or MinBackoff (after defaults) exceeds
// MaxBackoff.
func (c WebhookSinkConfig) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("outbox: webhook config: URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("outbox: webhook config: URL %q is not an absolute http or https URL", c.URL)
	}
	if len(c.Secret) == 0 {
		return errors.New("outbox: webhook config: Secret is required")
	}
	if c.Timeout < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.MaxRetryAfter < 0 {
		return errors.New("outbox: webhook config: durations must not be negative")
	}
	if c.MaxAttempts < 0 || c.BatchSize < 0 {
		return errors.New("outbox: webhook config: MaxAttempts and BatchSize must not be negative")
	}
	if d := c.withDefaults(); d.MinBackoff > d.MaxBackoff {
		return fmt.Errorf("outbox: webhook config: MinBackoff %s exceeds MaxBackoff %s", d.MinBackoff, d.MaxBackoff)
	}
	return nil
}

// WebhookStatusError reports a webhook response whose status is not 2xx. The sink retries
// 429 and 5xx; any other status comes back wrapped with Permanent.
type WebhookStatusError struct {
	StatusCode int    // HTTP status of the response
	Body       string // start of the response body, for diagnosis
}

// Error returns the status and the start of the body.
func (e *WebhookStatusError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("webhook answered %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("webhook answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Body)
}

// WebhookSink is a Sink that POSTs message payloads, unchanged, as signed JSON to an HTTP
// endpoint. It is safe for concurrent use. Receivers see each message at least once and must
// deduplicate by its ID (the ledger's events carry it as "id").
type WebhookSink struct {
	cfg WebhookSinkConfig
}

// NewWebhookSink returns a webhook sink for cfg with defaults applied, or the error of
// cfg.Validate.
func NewWebhookSink(cfg WebhookSinkConfig) (*WebhookSink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cfg.Secret = bytes.Clone(cfg.Secret)
	return &WebhookSink{cfg: cfg}, nil
}

// Deliver POSTs msgs in order, in requests of at most BatchSize messages, one request after
// the other. It returns nil when every request got a 2xx answer. A request that fails with
// a network error, a timeout, 429 or 5xx is retried up to MaxAttempts times with backoff;
// then Deliver returns the last error (which wraps a *WebhookStatusError or the
// transport's error). Any other status returns at once an error that wraps
// ErrPermanent and a *WebhookStatusError. When ctx is done Deliver returns an error
// wrapping ctx.Err(). On error, earlier requests of the call may have been accepted; the
// relay redelivers them. An empty msgs returns nil without a request.
func (s *WebhookSink) Deliver(ctx context.Context, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("outbox: webhook: %w", err)
	}
	for start := 0; start < len(msgs); start += s.cfg.BatchSize {
		chunk := msgs[start:min(start+s.cfg.BatchSize, len(msgs))]
		if err := s.post(ctx, chunk); err != nil {
			return fmt.Errorf("outbox: webhook: %s: %w", webhookDescribe(chunk), err)
		}
	}
	return nil
}

// post sends one request for chunk, retrying as Deliver describes.
func (s *WebhookSink) post(ctx context.Context, chunk []Message) error {
	body, err := EncodeWebhookBody(chunk)
	if err != nil {
		return Permanent(err)
	}
	sig := WebhookSignature(s.cfg.Secret, body)
	for attempt := 1; ; attempt++ {
		retryAfter, err := s.attempt(ctx, chunk, body, sig)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrPermanent) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		}
		if attempt >= s.cfg.MaxAttempts {
			return fmt.Errorf("%d attempts failed, last: %w", attempt, err)
		}
		wait := retryAfter
		if wait < 0 {
			wait = s.backoff(attempt)
		}
		if werr := backoff.Wait(ctx, wait); werr != nil {
			return fmt.Errorf("%w (last attempt: %v)", werr, err)
		}
	}
}

// attempt sends the request once. It returns the wait a Retry-After header asked for
// (negative when absent) and nil for 2xx, a retryable error, or a Permanent one.
func (s *WebhookSink) attempt(ctx context.Context, chunk []Message, body []byte, sig string) (time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return -1, Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tally-outbox-webhook")
	req.Header.Set(WebhookSignatureHeader, sig)
	if len(chunk) == 1 {
		req.Header.Set(WebhookEventIDHeader, chunk[0].ID)
	} else {
		req.Header.Set(WebhookEventCountHeader, strconv.Itoa(len(chunk)))
	}
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, webhookMaxDrain))
		return -1, nil
	}
	head, _ := io.ReadAll(io.LimitReader(resp.Body, webhookMaxErrBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, webhookMaxDrain))
	serr := &WebhookStatusError{StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(head))}
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
		return -1, Permanent(serr)
	}
	return s.retryAfter(resp.Header.Get("Retry-After")), serr
}

// retryAfter parses a Retry-After value in seconds, capped at MaxRetryAfter. It returns -1
// for an absent or non-numeric value (the HTTP-date form is not supported).
func (s *WebhookSink) retryAfter(v string) time.Duration {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	if n > int64(s.cfg.MaxRetryAfter/time.Second) {
		return s.cfg.MaxRetryAfter
	}
	return time.Duration(n) * time.Second
}

// backoff returns the jittered wait after the given failed attempt (1-based).
func (s *WebhookSink) backoff(attempt int) time.Duration {
	p := backoff.Policy{Base: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff, Jitter: 0.5}
	return p.Delay(attempt)
}

// webhookDescribe names the messages of a request for error messages.
func webhookDescribe(chunk []Message) string {
	if len(chunk) == 1 {
		return "message " + chunk[0].ID
	}
	return fmt.Sprintf("%d messages %s..%s", len(chunk), chunk[0].ID, chunk[len(chunk)-1].ID)
}

// EncodeWebhookBody returns the JSON body the webhook sink sends for msgs: the payload
// itself, byte for byte, for one message; {"events":[payload,...]} with the payloads
// unchanged for several (or none). It returns an error when a payload is not valid JSON.
func EncodeWebhookBody(msgs []Message) ([]byte, error) {
	for i := range msgs {
		if !json.Valid(msgs[i].Payload) {
			return nil, fmt.Errorf("outbox: encode webhook body: message %s: payload is not valid JSON", msgs[i].ID)
		}
	}
	if len(msgs) == 1 {
		return bytes.Clone(msgs[0].Payload), nil
	}
	n := len(`{"events":[]}`) + len(msgs)
	for i := range msgs {
		n += len(msgs[i].Payload)
	}
	body := make([]byte, 0, n)
	body = append(body, `{"events":[`...)
	for i := range msgs {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, msgs[i].Payload...)
	}
	return append(body, "]}"...), nil
}

// DecodeWebhookBody returns the payloads of a webhook request body, for receivers: the body
// itself for a single-message body, every element for {"events":[...]}. A body is a batch
// when it is a JSON object with an "events" member, so a payload sent alone must not have
// one at its top level (the ledger's events do not). It returns an error when body is not
// a JSON object or its "events" member is not an array. It does not check the signature;
// call VerifySignature first. Decode the payloads with the producer's type (the ledger's
// events: json.Unmarshal into ledger.Event).
func DecodeWebhookBody(body []byte) ([]json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, fmt.Errorf("outbox: decode webhook body: %w", err)
	}
	if obj == nil {
		return nil, errors.New("outbox: decode webhook body: not a JSON object")
	}
	raw, ok := obj["events"]
	if !ok {
		return []json.RawMessage{bytes.Clone(body)}, nil
	}
	var payloads []json.RawMessage
	if err := json.Unmarshal(raw, &payloads); err != nil || payloads == nil { // null gives nil
		return nil, errors.New("outbox: decode webhook body: \"events\" is not an array")
	}
	return payloads, nil
}

// WebhookSignature returns the WebhookSignatureHeader value for body: "sha256=" followed by
// the lowercase hex HMAC-SHA256 of body keyed with secret.
func WebhookSignature(secret, body []byte) string {
	return webhookSignaturePrefix + hex.EncodeToString(webhookMAC(secret, body))
}

// VerifySignature reports whether header is a valid WebhookSignatureHeader value for body
// under secret. The MACs are compared in constant time. It returns false for an empty
// secret or a header that is not "sha256=<hex>".
func VerifySignature(secret, body []byte, header string) bool {
	if len(secret) == 0 {
		return false
	}
	h, ok := strings.CutPrefix(header, webhookSignaturePrefix)
	if !ok {
		return false
	}
	got, err := hex.DecodeString(h)
	if err != nil {
		return false
	}
	return hmac.Equal(got, webhookMAC(secret, body))
}

// webhookMAC returns HMAC-SHA256(secret, body).
func webhookMAC(secret, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return m.Sum(nil)
}
