// Package handlers is Tally's HTTP API (DESIGN §8): the gin router, request decoding,
// problem+json errors, authentication and request limits.
package handlers

import (
	"context"
	"crypto/rand"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-ledger/tally/ledger"
)

// Ledger is what the handlers need of the ledger.
type Ledger interface {
	OpenAccount(ctx context.Context, cmd ledger.OpenAccount, opts ledger.WriteOptions) (ledger.Receipt, error)
	Deposit(ctx context.Context, cmd ledger.Deposit, opts ledger.WriteOptions) (ledger.Receipt, error)
	Withdraw(ctx context.Context, cmd ledger.Withdraw, opts ledger.WriteOptions) (ledger.Receipt, error)
	Account(ctx context.Context, id string) (*ledger.Account, error)
	Events(ctx context.Context, id string, after int64, limit int) ([]ledger.Event, int64, error)
	BalancesAt(ctx context.Context, id string, q ledger.HistoryQuery) (ledger.PastBalances, error)
	CloseAccount(ctx context.Context, id string, opts ledger.WriteOptions) (ledger.Receipt, error)
	CreateTransfer(ctx context.Context, req ledger.TransferRequest) (ledger.TransferResult, error)
	GetTransfer(ctx context.Context, id string) (ledger.Transfer, error)
	TransfersByMetadata(ctx context.Context, q ledger.MetadataQuery) (ledger.TransferPage, error)
	AccountsByMetadata(ctx context.Context, q ledger.MetadataQuery) (ledger.AccountPage, error)
	PlaceHold(ctx context.Context, cmd ledger.PlaceHold) (ledger.Receipt, error)
	CaptureHold(ctx context.Context, account, hold string, amount int64, to string, opts ledger.WriteOptions) (ledger.Receipt, error)
	VoidHold(ctx context.Context, account, hold string, opts ledger.WriteOptions) (ledger.Receipt, error)
	Hold(ctx context.Context, account, hold string) (ledger.Hold, error)
	PendingHolds(ctx context.Context, account, after string, limit int) ([]ledger.Hold, string, error)
	Batch(ctx context.Context, atomic bool, ops []ledger.BatchOp, opts ledger.WriteOptions) ([]ledger.BatchResult, bool, error)
	Ping(ctx context.Context) error
	SetOverdraftLimit(ctx context.Context, cmd ledger.SetOverdraftLimit, opts ledger.WriteOptions) (ledger.Receipt, error)
	CreateAlert(ctx context.Context, cmd ledger.CreateAlert, opts ledger.WriteOptions) (ledger.Receipt, error)
	DeleteAlert(ctx context.Context, account, id string, opts ledger.WriteOptions) (ledger.Receipt, error)
	Alerts(ctx context.Context, account string) ([]ledger.Alert, error)
}

// Config configures the HTTP API.
type Config struct {
	// MaxBodyBytes bounds request bodies; larger ones get 413 payload_too_large.
	// Default 1 MiB.
	MaxBodyBytes int64
	// Keys, when set, are the API keys accepted on /v1 routes (Authorization: Bearer
	// <token>), each with its scopes and tenant prefix (docs/security.md). Nil means no
	// authentication, for a loopback server: every /v1 request may read and write, and admin
	// operations are refused unless InsecureAdmin.
	Keys *Keys
	// InsecureAdmin allows admin operations (dead-letter replay) without keys. It cannot be
	// combined with Keys.
	InsecureAdmin bool
	// RateLimit limits the requests of each key (all requests share one bucket without
	// keys). Default off.
	RateLimit RateLimit
	// Logger receives one line per request (info) and errors the API could not map to a
	// client error. Default: discard.
	Logger *slog.Logger
	// Clock is the rate limiter's clock. Default time.Now.
	Clock func() time.Time
	// Relay, when set, serves GET /v1/relay and POST /v1/relay/dead-letters/replay.
	Relay Relay
	// Metrics, when set, is served at GET /metrics (no authentication).
	Metrics http.Handler
	// Registerer, when set, receives per-route request counters and latency histograms.
	Registerer prometheus.Registerer
	// RequestTimeout is the deadline of each request's context, which every ledger call
	// follows; a request that outlives it is answered 503 with Retry-After. Default
	// DefaultRequestTimeout (30s). It must not be negative.
	RequestTimeout time.Duration
}

// Validate returns an error for an unusable configuration.
func (c Config) Validate() error {
	if c.MaxBodyBytes < 0 {
		return errors.New("handlers: max body bytes must not be negative")
	}
	if c.RequestTimeout < 0 {
		return errors.New("handlers: request timeout must not be negative")
	}
	if c.Keys != nil && c.Keys.Len() == 0 {
		return errors.New("handlers: Keys holds no key")
	}
	if c.Keys != nil && c.InsecureAdmin {
		return errors.New("handlers: InsecureAdmin is for a server without keys; give a key the admin scope instead")
	}
	return c.RateLimit.validate()
}

// openAPI is the OpenAPI 3.1 description of the API, served at /openapi.json.
//
//go:embed openapi.json
var openAPI []byte

// DefaultEventsLimit is the page size of GET /v1/accounts/{id}/events without ?limit.
const DefaultEventsLimit = 100

type server struct {
	ledger    Ledger
	cfg       Config
	log       *slog.Logger
	anonymous *principal // every request's principal without keys
	limiter   *limiter   // nil without a rate limit
}

// New returns the HTTP handler of the API, or an error for an invalid cfg.
func New(l Ledger, cfg Config) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Logger == nil {
		// DiscardHandler is disabled at every level: the request log line is not even built.
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	s := &server{ledger: l, cfg: cfg, log: cfg.Logger,
		anonymous: &principal{name: anonymousName, scopes: scopeBit[ScopeRead] | scopeBit[ScopeWrite]}}
	if cfg.InsecureAdmin {
		s.anonymous.scopes |= scopeBit[ScopeAdmin]
	}
	if cfg.RateLimit.PerSecond > 0 {
		s.limiter = newLimiter(cfg.RateLimit, cfg.Clock)
	}

	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	// An API answers a path it does not serve with a 404 problem, not an HTML redirect to
	// another path (gin's default for a trailing slash or a path that needs cleaning).
	r.RedirectTrailingSlash, r.RedirectFixedPath = false, false
	r.Use(s.logRequest)
	if cfg.Registerer != nil {
		m, err := newHTTPMetrics(cfg.Registerer)
		if err != nil {
			return nil, err
		}
		r.Use(m.observe)
	}
	r.Use(s.recover, s.limitBody)
	r.Use(s.requestTimeout)
	r.NoRoute(func(c *gin.Context) { writeProblem(c, specNotFound, "no such route") })
	r.NoMethod(func(c *gin.Context) { writeProblem(c, specNotAllowed, "method not allowed on this route") })

	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"status": "ok"}) })
	r.GET("/openapi.json", func(c *gin.Context) { c.Data(http.StatusOK, "application/json", openAPI) })
	r.GET("/readyz", s.ready)
	r.GET("/console", s.consolePage) // public page; its API calls carry the operator's key
	r.GET("/console/:asset", s.consoleAsset)

	// Every /v1 route names the scope it needs and, for a tenant key, the accounts it
	// touches: in the path here (own), in the body in its handler (foreign). docs/security.md
	// has the table; TestAuthTable holds every route to it.
	read, write, admin := s.need(ScopeRead), s.need(ScopeWrite), s.need(ScopeAdmin)
	v1 := r.Group("/v1", s.authenticate)
	v1.POST("/accounts", write, s.openAccount)
	v1.GET("/accounts", read, s.listAccounts) // a tenant's answer is filtered to its accounts
	v1.GET("/accounts/:id", read, s.own(hideBare), s.getAccount)
	v1.GET("/accounts/:id/events", read, s.own(hideBare), s.listEvents)
	v1.GET("/accounts/:id/balances", read, s.own(hideBare), s.pastBalances)
	v1.PATCH("/accounts/:id", write, s.own(hideNamed), s.patchAccount)
	v1.POST("/accounts/:id/alerts", write, s.own(hideNamed), s.createAlert)
	v1.GET("/accounts/:id/alerts", read, s.own(hideBare), s.listAlerts)
	v1.DELETE("/accounts/:id/alerts/:alert", write, s.own(hideNamed), s.deleteAlert)
	v1.POST("/accounts/:id/deposits", write, s.own(hideNamed), s.deposit)
	v1.POST("/accounts/:id/withdrawals", write, s.own(hideNamed), s.withdraw)
	v1.POST("/accounts/:id/close", write, s.own(hideNamed), s.closeAccount)
	v1.POST("/accounts/:id/holds", write, s.own(hideNamed), s.placeHold)
	v1.GET("/accounts/:id/holds", read, s.own(hideBare), s.listHolds)
	v1.GET("/accounts/:id/holds/:hold", read, s.own(hideHold), s.getHold)
	v1.POST("/accounts/:id/holds/:hold/capture", write, s.own(hideHold), s.captureHold)
	v1.POST("/accounts/:id/holds/:hold/void", write, s.own(hideHold), s.voidHold)
	v1.POST("/transfers", write, s.createTransfer)
	v1.GET("/transfers", read, s.listTransfers) // as GET /v1/accounts
	v1.GET("/transfers/:id", read, s.getTransfer)
	v1.POST("/batch", write, s.batch)
	if cfg.Relay != nil {
		v1.GET("/relay", read, s.global, s.relayStatus)
		v1.POST("/relay/dead-letters/replay", admin, s.global, s.replayDeadLetters)
	}
	if cfg.Metrics != nil {
		r.GET("/metrics", gin.WrapH(cfg.Metrics))
	}
	return r, nil
}

// recover turns a panic into a 500 problem without a stack trace in the response.
func (s *server) recover(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("panic in handler", "request_id", requestIDOf(c), "method", c.Request.Method, "path", c.Request.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			writeProblem(c, specInternal, "an internal error occurred; it has been logged")
		}
	}()
	c.Next()
}

func (s *server) limitBody(c *gin.Context) {
	if c.Request.ContentLength > s.cfg.MaxBodyBytes {
		writeProblem(c, specTooLarge, fmt.Sprintf("request bodies are limited to %d bytes", s.cfg.MaxBodyBytes))
		return
	}
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, s.cfg.MaxBodyBytes)
	c.Next()
}

// requestIDHeader carries a request's ID: the client's when it is sane, else one made
// here; it is echoed in the response and logged.
const requestIDHeader = "X-Request-ID"

// maxRequestID bounds a client's request ID.
const maxRequestID = 128

// requestID returns the request's X-Request-ID when it is 1..128 of [A-Za-z0-9._:-],
// else a new random one: a client's ID must not be able to forge or break log lines.
func requestID(c *gin.Context) string {
	id := c.GetHeader(requestIDHeader)
	ok := id != "" && len(id) <= maxRequestID
	for i := 0; ok && i < len(id); i++ {
		b := id[i]
		ok = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || strings.IndexByte("._:-", b) >= 0
	}
	if !ok {
		id = rand.Text()
	}
	return id
}

// logRequest gives the request its ID (echoed in X-Request-ID) and logs one line when it
// is answered: route, status, duration, ID and the key's name (never its token).
func (s *server) logRequest(c *gin.Context) {
	start := time.Now()
	id := requestID(c)
	c.Set(requestIDHeader, id)
	c.Header(requestIDHeader, id)
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	s.log.LogAttrs(c.Request.Context(), slog.LevelInfo, "request",
		slog.String("request_id", id), slog.String("method", c.Request.Method), slog.String("path", c.Request.URL.Path),
		slog.String("route", route), slog.Int("status", c.Writer.Status()),
		slog.Duration("duration", time.Since(start)), slog.String("key", keyName(c)), slog.String("remote", c.RemoteIP()))
}

// requestIDOf returns the ID logRequest gave the request.
func requestIDOf(c *gin.Context) string { return c.GetString(requestIDHeader) }

func (s *server) ready(c *gin.Context) {
	if err := s.ledger.Ping(c.Request.Context()); err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready"})
}

type openAccountBody struct {
	ID             string            `json:"id"`
	AllowNegative  bool              `json:"allow_negative"`
	Metadata       map[string]string `json:"metadata"`
	OverdraftLimit map[string]int64  `json:"overdraft_limit"`
}

func (s *server) openAccount(c *gin.Context) {
	var body openAccountBody
	if !s.decode(c, &body) {
		return
	}
	if body.ID == "" {
		writeProblem(c, specInvalid, "id is required")
		return
	}
	if !mayOpen(c, body.ID) {
		return
	}
	s.write(c, http.StatusCreated, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.OpenAccount(ctx, ledger.OpenAccount{ID: body.ID, AllowNegative: body.AllowNegative, Metadata: body.Metadata,
			OverdraftLimit: body.OverdraftLimit}, opts)
	})
}

func (s *server) getAccount(c *gin.Context) {
	acc, err := s.ledger.Account(c.Request.Context(), c.Param("id"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, acc)
}

type eventsPage struct {
	Events []ledger.Event `json:"events"`
	Next   *int64         `json:"next"`
}

func (s *server) listEvents(c *gin.Context) {
	after, err := queryInt(c, "after", 0)
	if err != nil {
		writeProblem(c, specInvalid, err.Error())
		return
	}
	limit, err := queryLimit(c, DefaultEventsLimit, ledger.MaxEventsPage)
	if err != nil {
		writeProblem(c, specInvalid, err.Error())
		return
	}
	events, next, err := s.ledger.Events(c.Request.Context(), c.Param("id"), after, limit)
	if err != nil {
		s.writeError(c, err)
		return
	}
	page := eventsPage{Events: events}
	if next > 0 {
		page.Next = &next
	}
	c.JSON(http.StatusOK, page)
}

// pastBalances answers balance history: ?at_version=N, ?at=RFC 3339 time, or neither (the
// latest event).
func (s *server) pastBalances(c *gin.Context) {
	var q ledger.HistoryQuery
	if raw, ok := c.GetQuery("at_version"); ok {
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 1 {
			writeProblem(c, specInvalid, "at_version must be a version: an integer from 1")
			return
		}
		q.Version = n
	}
	if raw, ok := c.GetQuery("at"); ok {
		t, err := time.Parse(time.RFC3339Nano, raw)
		if err != nil || t.Before(time.Unix(0, 0)) {
			writeProblem(c, specInvalid, "at must be an RFC 3339 time after 1970, such as 2026-01-02T15:04:05Z")
			return
		}
		q.At = t
	}
	past, err := s.ledger.BalancesAt(c.Request.Context(), c.Param("id"), q)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, past)
}

// queryLimit returns the page size ?limit= asks for, def without it, or an error unless it
// is 1..max.
func queryLimit(c *gin.Context, def, max int) (int, error) {
	limit, err := queryInt(c, "limit", int64(def))
	if err == nil && (limit < 1 || limit > int64(max)) {
		err = fmt.Errorf("limit must be 1..%d", max)
	}
	return int(limit), err
}

func queryInt(c *gin.Context, name string, def int64) (int64, error) {
	raw, ok := c.GetQuery(name)
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s must be a non-negative integer", name)
	}
	return n, nil
}

type moneyBody struct {
	Currency string `json:"currency"`
	Amount   Amount `json:"amount"`
}

func (s *server) deposit(c *gin.Context) {
	var body moneyBody
	if !s.decode(c, &body) || !requireAmount(c, body.Amount) {
		return
	}
	s.write(c, http.StatusCreated, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.Deposit(ctx, ledger.Deposit{Account: c.Param("id"), Currency: body.Currency, Amount: body.Amount.Value}, opts)
	})
}

func (s *server) withdraw(c *gin.Context) {
	var body moneyBody
	if !s.decode(c, &body) || !requireAmount(c, body.Amount) {
		return
	}
	s.write(c, http.StatusCreated, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.Withdraw(ctx, ledger.Withdraw{Account: c.Param("id"), Currency: body.Currency, Amount: body.Amount.Value}, opts)
	})
}

func requireAmount(c *gin.Context, a Amount) bool {
	if !a.Set {
		writeProblem(c, specInvalid, "amount is required")
		return false
	}
	return true
}

// write runs a ledger write with the request's Idempotency-Key and writes its receipt.
func (s *server) write(c *gin.Context, status int, fn func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error)) {
	opts := ledger.WriteOptions{IdempotencyKey: c.GetHeader("Idempotency-Key")}
	rc, err := fn(c.Request.Context(), opts)
	if err != nil {
		s.writeError(c, err)
		return
	}
	if rc.Replayed {
		c.Header("Idempotent-Replayed", "true")
	}
	c.Data(status, "application/json", rc.Body)
}
