package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/lock"
	"github.com/tally-ledger/tally/outbox"
)

// TestListHoldsRoute: GET /v1/accounts/{id}/holds pages through the pending holds
// (?after, ?limit, next only when another page follows) and refuses bad paging with a 400.
func TestListHoldsRoute(t *testing.T) {
	a := mustAPI(t, handlers.Config{})
	a.mustOpen(1000, "alice", "bob")
	for _, id := range []string{"h3", "h1", "h2"} {
		a.mustDo(201, "POST", "/v1/accounts/alice/holds", fmt.Sprintf(`{"id":%q,"currency":"USD","amount":10,"timeout_seconds":3600}`, id))
	}
	a.mustDo(200, "POST", "/v1/accounts/alice/holds/h2/void", ``)

	type page struct {
		Holds []ledger.Hold `json:"holds"`
		Next  *string       `json:"next"`
	}
	get := func(path string) (page, string) {
		rec := a.mustDo(200, "GET", path, ``)
		var p page
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
		return p, rec.Body.String()
	}
	ids := func(p page) []string {
		var out []string
		for _, h := range p.Holds {
			out = append(out, h.ID)
		}
		return out
	}
	p, _ := get("/v1/accounts/alice/holds")
	assert.Equal(t, []string{"h1", "h3"}, ids(p))
	assert.Nil(t, p.Next, "one page: no next")
	assert.Equal(t, int64(10), p.Holds[0].Amount)
	assert.Equal(t, ledger.HoldPending, p.Holds[0].Status)

	p, _ = get("/v1/accounts/alice/holds?limit=1")
	assert.Equal(t, []string{"h1"}, ids(p))
	require.NotNil(t, p.Next)
	p, _ = get("/v1/accounts/alice/holds?limit=1&after=" + *p.Next)
	assert.Equal(t, []string{"h3"}, ids(p))
	assert.Nil(t, p.Next)

	_, body := get("/v1/accounts/bob/holds")
	assert.JSONEq(t, `{"holds":[]}`, body, "no holds is an empty list")

	requireProblem(t, a.do("GET", "/v1/accounts/nobody/holds", ``), 404, "account_not_found")
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "limit=-1", "after=a:b", "after=" + strings.Repeat("x", 300)} {
		requireProblem(t, a.do("GET", "/v1/accounts/alice/holds?"+q, ``), 400, "invalid_request")
	}
}

// TestConsoleAssets: the console's files are served with their types, a strict CSP and
// nosniff; any other name under /console/ is a 404 problem.
func TestConsoleAssets(t *testing.T) {
	h, err := handlers.New(noLedger{}, handlers.Config{})
	require.NoError(t, err)
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec
	}
	for path, ctype := range map[string]string{
		"/console":             "text/html; charset=utf-8",
		"/console/index.html":  "text/html; charset=utf-8",
		"/console/console.js":  "text/javascript; charset=utf-8",
		"/console/console.css": "text/css; charset=utf-8",
	} {
		rec := get(path)
		require.Equal(t, 200, rec.Code, path)
		assert.Equal(t, ctype, rec.Header().Get("Content-Type"), path)
		csp := rec.Header().Get("Content-Security-Policy")
		assert.Contains(t, csp, "default-src 'none'", path)
		assert.Contains(t, csp, "script-src 'self'", path)
		assert.NotContains(t, csp, "unsafe-inline", path)
		assert.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"), path)
		assert.NotEmpty(t, rec.Body.Bytes(), path)
	}
	page := get("/console").Body.String()
	assert.NotContains(t, page, "<script>", "no inline script: the CSP would block it")
	assert.NotContains(t, page, "style=", "no inline style: the CSP would block it")
	assert.NotContains(t, page, "http", "no other origin: the page works on a closed network")
	for _, path := range []string{"/console/nope.js", "/console/console.go", "/console/", "/console/..%2fconsole.go", "/console/console.js/x"} {
		rec := get(path)
		assert.Equal(t, 404, rec.Code, path)
		assert.NotContains(t, rec.Body.String(), "package handlers", path)
	}
}

// noLedger is a Ledger for routes that never reach it.
type noLedger struct{ handlers.Ledger }

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// newBrowser starts a headless Chromium for the test and returns its tab's context. The
// flags keep it off the network (no background services, no QUIC) and in a fresh profile.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the console test drives headless Chromium at %s, which is missing: run `make deps` "+
			"(it installs Debian's chromium package: apt-get install -y chromium): %v", chromiumPath, err)
	}
	profile := t.TempDir() // removed after the browser has stopped (cleanups run last-in first-out)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.UserDataDir(profile), chromedp.WindowSize(1280, 1100),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	// The first Run starts the browser; its context must not carry a timeout.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")))

	// A script error in the page fails the test.
	var mu sync.Mutex
	var thrown []string
	exceptions := chromedp.Events(ctx, runtime.ExceptionThrown)
	go func() {
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			mu.Lock()
			thrown = append(thrown, ev.ExceptionDetails.Text+" "+exceptionDescription(ev.ExceptionDetails))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		assert.Empty(t, thrown, "the console page threw")
	})
	return ctx
}

func exceptionDescription(d *runtime.ExceptionDetails) string {
	if d.Exception != nil {
		return d.Exception.Description
	}
	return ""
}

// page drives one tab of the console with a deadline per step.
type page struct {
	t   *testing.T
	ctx context.Context
}

const stepTimeout = 30 * time.Second // generous: two cores are shared by several test runs

func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	require.NoError(p.t, chromedp.Do(ctx, steps...))
}

// contextGone reports whether err is Chromium saying that the page's JavaScript context an
// evaluation was sent to no longer exists: a navigation replaced it between chromedp
// picking it and the call (CDP reports this only as code -32000 with this message). The
// evaluation is sent again, to the new context.
func contextGone(err error) bool {
	var cdpErr *cdproto.Error
	return errors.As(err, &cdpErr) && (strings.Contains(cdpErr.Message, "Cannot find context with specified id") ||
		strings.Contains(cdpErr.Message, "Execution context was destroyed"))
}

// until waits for a JavaScript condition to be true in the page.
func (p *page) until(cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(stepTimeout)))
	for contextGone(err) && ctx.Err() == nil {
		_, err = chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(stepTimeout)))
	}
	if err != nil {
		// Say what the page showed instead.
		shown, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.body.innerText`))
		require.NoError(p.t, err, "waiting in the page for: %s\nthe page shows:\n%s", cond, shown)
	}
}

// eval returns a JavaScript expression's value.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	for contextGone(err) && ctx.Err() == nil {
		v, err = chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	}
	require.NoError(p.t, err, expr)
	return v
}

func (p *page) text(id string) string {
	p.t.Helper()
	return eval[string](p, fmt.Sprintf(`document.getElementById(%q).textContent`, id))
}

// rows returns the cells' text of a table's body.
func (p *page) rows(table string) [][]string {
	p.t.Helper()
	return eval[[][]string](p, fmt.Sprintf(`[...document.querySelectorAll('#%s tbody tr')].map(r => [...r.cells].map(c => c.textContent))`, table))
}

func (p *page) screenshot(sel string) image.Image {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	b, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(sel)))
	require.NoError(p.t, err)
	img, err := png.Decode(bytes.NewReader(b))
	require.NoError(p.t, err, "a screenshot is a PNG")
	if dir := os.Getenv("TALLY_CONSOLE_SCREENSHOTS"); dir != "" { // to look at them: docs/console.md
		name := strings.NewReplacer("#", "", " ", "_").Replace(sel) + ".png"
		require.NoError(p.t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
	}
	return img
}

// requireDrawn fails unless img is at least minW×minH and really shows something: not one
// flat colour, with a share of pixels off the background and several colours (text,
// borders, highlights).
func requireDrawn(t *testing.T, img image.Image, minW, minH int) {
	t.Helper()
	b := img.Bounds()
	require.GreaterOrEqual(t, b.Dx(), minW, "screenshot width")
	require.GreaterOrEqual(t, b.Dy(), minH, "screenshot height")
	counts := map[color.RGBA]int{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			counts[color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)]++
		}
	}
	bg := 0
	for _, n := range counts {
		bg = max(bg, n)
	}
	total := b.Dx() * b.Dy()
	assert.Greater(t, len(counts), 20, "colours in the screenshot: text is anti-aliased, so a drawn panel has many")
	assert.Greater(t, total-bg, total/50, "pixels off the background colour")
}

// differs reports whether two screenshots differ in size or in any pixel.
func differs(a, b image.Image) bool {
	if a.Bounds() != b.Bounds() {
		return true
	}
	for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
		for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
			if a.At(x, y) != b.At(x, y) {
				return true
			}
		}
	}
	return false
}

// heldBack shows a transfer as pending until released, then as it is: a cross-partition
// transfer cannot be kept pending on demand (the request drives the saga inline), and the
// console must be seen to follow one until it completes.
type heldBack struct {
	handlers.Ledger
	released atomic.Bool
}

func (h *heldBack) GetTransfer(ctx context.Context, id string) (ledger.Transfer, error) {
	tr, err := h.Ledger.GetTransfer(ctx, id)
	if err == nil && !h.released.Load() {
		tr.Status, tr.CompletedAt = ledger.TransferPending, nil
	}
	return tr, err
}

// deadLetters returns the dead letters and the backlog of every partition, from Redis.
func deadLetters(t *testing.T, admin *outbox.Admin) (dead, backlog int64) {
	t.Helper()
	st, err := admin.Status(context.Background())
	require.NoError(t, err)
	for _, p := range st {
		dead += p.DeadLetters
		backlog += p.Backlog
	}
	return dead, backlog
}

// makeDeadLetters runs a relay whose sink refuses every event until every entry of the
// outbox is dead-lettered, then stops it (so that replayed letters stay in the outbox).
func makeDeadLetters(t *testing.T, rdb *redis.Client, admin *outbox.Admin, partitions int) int64 {
	t.Helper()
	locker, err := lock.New([]redis.UniversalClient{rdb}, lock.Config{})
	require.NoError(t, err)
	defer locker.Close()
	refuse := outbox.NewHandlerSink(func(ctx context.Context, m outbox.Message) error {
		return outbox.Permanent(errors.New("the console test's sink refuses every event"))
	})
	relay, err := outbox.NewRelay(rdb, locker, outbox.Config{Partitions: partitions, Sinks: []outbox.Sink{refuse}, PollInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var dead int64
	require.Eventually(t, func() bool {
		var backlog int64
		dead, backlog = deadLetters(t, admin)
		return backlog == 0 && dead > 0
	}, 20*time.Second, 20*time.Millisecond, "every event is dead-lettered")
	return dead
}

// TestConsoleInChromium drives the operator console in headless Chromium against the real
// API on Redis: with API keys, the page asks for a token; it looks up an account (exact
// int64 balances, the pending holds, events newest first with paging), follows a transfer
// until it completes, shows the relay's dead letters, refuses the replay for a key without
// the admin scope (403 shown, nothing replayed in Redis) and replays with an admin key
// (dead letters gone in Redis and on the page). Data is shown as text, never as HTML.
// Without keys the page works with no token. Screenshots are decoded and checked here.
func TestConsoleInChromium(t *testing.T) {
	ctx := context.Background()
	const partitions = 4
	rdb := redistest.MustStart(t).Client()
	l, err := ledger.Open(ctx, rdb, ledger.Config{Partitions: partitions})
	require.NoError(t, err)
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{Partitions: partitions})
	require.NoError(t, err)

	// alice: two currencies (EUR above 2^53, which a float would round), two pending holds,
	// a voided one, a transfer to bob and enough deposits for two pages of events.
	none := ledger.WriteOptions{}
	const evil = `<img src=x onerror="document.title='pwned'">`
	_, err = l.OpenAccount(ctx, ledger.OpenAccount{ID: "alice", Metadata: map[string]string{"note": evil}}, none)
	require.NoError(t, err)
	_, err = l.OpenAccount(ctx, ledger.OpenAccount{ID: "bob"}, none)
	require.NoError(t, err)
	_, err = l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "USD", Amount: 1500}, none)
	require.NoError(t, err)
	_, err = l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "EUR", Amount: 9007199254740993}, none)
	require.NoError(t, err)
	for i := range 24 {
		_, err = l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "USD", Amount: int64(i + 1)}, none)
		require.NoError(t, err)
	}
	for _, h := range []ledger.PlaceHold{
		{Account: "alice", ID: "hold-usd", Currency: "USD", Amount: 400, Timeout: time.Hour},
		{Account: "alice", ID: "hold-eur", Currency: "EUR", Amount: 7, Timeout: time.Hour},
		{Account: "alice", ID: "hold-void", Currency: "USD", Amount: 1, Timeout: time.Hour},
	} {
		_, err = l.PlaceHold(ctx, h)
		require.NoError(t, err)
	}
	_, err = l.VoidHold(ctx, "alice", "hold-void", none)
	require.NoError(t, err)
	tr, err := l.CreateTransfer(ctx, ledger.TransferRequest{ID: "t-1", From: "alice", To: "bob", Currency: "USD", Amount: 250})
	require.NoError(t, err)
	require.Equal(t, ledger.TransferCompleted, tr.Transfer.Status)
	acc, err := l.Account(ctx, "alice")
	require.NoError(t, err)
	version := acc.Version // 1 opened + 26 deposits + 3 placed + 1 voided + 1 debited = 32
	require.Equal(t, int64(32), version)
	events, _, err := l.Events(ctx, "alice", 0, ledger.MaxEventsPage)
	require.NoError(t, err)

	dead := makeDeadLetters(t, rdb, admin, partitions)

	viewer, operator := "viewer-key-0123456789", "operator-key-0123456789"
	keys := mustKeys(t, key("viewer", viewer, "", handlers.ScopeRead), key("operator", operator, "", handlers.ScopeRead, handlers.ScopeAdmin))
	api := &heldBack{Ledger: l}
	h, err := handlers.New(api, handlers.Config{Keys: keys, Relay: relayStatus{admin}})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	start := time.Now()
	p := &page{t: t, ctx: newBrowser(t)}
	t.Logf("browser started in %v", time.Since(start).Round(time.Millisecond))

	// No key yet: the relay panel's first call is 401 and the page asks for a token.
	p.do(chromedp.Navigate(srv.URL + "/console"))
	p.until(`!document.getElementById('token-prompt').hidden`)
	assert.Contains(t, p.text("token-prompt"), "requires an API key")
	assert.Contains(t, p.text("relay-problem"), "401")

	p.do(chromedp.SendKeys(chromedp.ID("token"), viewer), chromedp.Click(chromedp.ID("token-save")))
	p.until(`document.getElementById('relay-totals').dataset.dead === '` + fmt.Sprint(dead) + `'`)
	assert.True(t, eval[bool](p, `document.getElementById('token-prompt').hidden`))
	assert.Equal(t, viewer, eval[string](p, `sessionStorage.getItem('tally.console.token')`), "the key is kept for the tab")
	assert.Len(t, p.rows("partitions"), partitions)

	// The account.
	p.do(chromedp.SendKeys(chromedp.ID("account-id"), "alice"), chromedp.Click(chromedp.CSS("#account-form button")))
	p.until(`document.querySelectorAll('#events tbody tr').length > 0 && document.querySelectorAll('#holds tbody tr').length > 0`)
	assert.Equal(t, [][]string{
		{"EUR", "9007199254740993", "7", "9007199254740986"},
		{"USD", "1550", "400", "1150"}, // 1500 + (1+…+24) − 250 posted, 400 held
	}, p.rows("balances"))
	assert.Equal(t, "32", p.text("account-version"))
	assert.Equal(t, "note="+evil, p.text("account-metadata"), "metadata is shown as text")
	assert.Zero(t, eval[int](p, `document.querySelectorAll('img').length`), "no markup from data")
	assert.Equal(t, "Tally console", eval[string](p, `document.title`))
	holds := p.rows("holds")
	require.Len(t, holds, 2, "the pending holds, not the voided one")
	assert.Equal(t, []string{"hold-eur", "EUR", "7"}, holds[0][:3])
	assert.Equal(t, []string{"hold-usd", "USD", "400"}, holds[1][:3])

	// Events: the 20 newest, newest first; Older shows the rest down to AccountOpened.
	wantEvents := func(from, to int64) [][]string {
		var out [][]string
		for v := to; v >= from; v-- {
			out = append(out, []string{fmt.Sprint(v), events[v-1].Type})
		}
		return out
	}
	shown := func() [][]string {
		var out [][]string
		for _, r := range p.rows("events") {
			out = append(out, []string{r[0], r[2]})
		}
		return out
	}
	assert.Equal(t, wantEvents(13, 32), shown())
	assert.Equal(t, ledger.EventTransferDebited, shown()[0][1])
	assert.Contains(t, p.rows("events")[0][3], "transfer_id=t-1")
	assert.True(t, eval[bool](p, `document.getElementById('events-newer').disabled`))
	p.do(chromedp.Click(chromedp.ID("events-older")))
	p.until(`document.querySelector('#events tbody tr').cells[0].textContent === '12'`)
	assert.Equal(t, wantEvents(1, 12), shown())
	assert.Equal(t, ledger.EventAccountOpened, shown()[11][1])
	assert.True(t, eval[bool](p, `document.getElementById('events-older').disabled`))
	p.do(chromedp.Click(chromedp.ID("events-newer")))
	p.until(`document.querySelector('#events tbody tr').cells[0].textContent === '32'`)

	accountShot := p.screenshot("#account-panel")
	requireDrawn(t, accountShot, 400, 500)
	balancesShot := p.screenshot("#balances")
	requireDrawn(t, balancesShot, 300, 60)

	// A missing account is the API's problem, shown as such.
	p.do(chromedp.SetValue(chromedp.ID("account-id"), "nobody"), chromedp.Click(chromedp.CSS("#account-form button")))
	p.until(`!document.getElementById('account-problem').hidden`)
	assert.Contains(t, p.text("account-problem"), "404")
	assert.Contains(t, p.text("account-problem"), "account_not_found")

	// The transfer: pending, followed without a click until it completes.
	p.do(chromedp.SendKeys(chromedp.ID("transfer-id"), "t-1"), chromedp.Click(chromedp.CSS("#transfer-form button")))
	p.until(`document.getElementById('transfer-status').textContent === 'pending'`)
	assert.NotEmpty(t, p.text("transfer-following"))
	assert.Equal(t, "250", p.text("transfer-amount"))
	assert.Equal(t, "alice", p.text("transfer-from"))
	assert.Equal(t, "bob", p.text("transfer-to"))
	api.released.Store(true)
	p.until(`document.getElementById('transfer-status').textContent === 'completed'`)
	assert.Empty(t, p.text("transfer-following"), "following stops at a final status")
	assert.NotEqual(t, "—", p.text("transfer-completed"))

	// Replay with a key without the admin scope: 403 shown, nothing replayed.
	before := p.screenshot("#relay-panel")
	requireDrawn(t, before, 400, 150)
	assert.Equal(t, dead, eval[int64](p, `document.querySelectorAll('#partitions td.dead.alert').length > 0 ? `+
		`[...document.querySelectorAll('#partitions td.dead')].reduce((s, c) => s + Number(c.textContent), 0) : -1`))
	p.do(chromedp.Click(chromedp.ID("relay-replay")))
	p.until(`!document.getElementById('relay-problem').hidden`)
	assert.Contains(t, p.text("relay-problem"), "403")
	assert.Contains(t, p.text("relay-problem"), "forbidden")
	got, _ := deadLetters(t, admin)
	assert.Equal(t, dead, got, "a refused replay moves nothing")

	// With the operator's key (read and admin) the replay empties the dead letters.
	p.do(chromedp.SendKeys(chromedp.ID("token"), operator), chromedp.Click(chromedp.ID("token-save")))
	p.until(`sessionStorage.getItem('tally.console.token') === '` + operator + `' && document.getElementById('relay-problem').hidden`)
	p.do(chromedp.Click(chromedp.ID("relay-replay")))
	p.until(`document.getElementById('relay-totals').dataset.dead === '0' && !document.getElementById('replay-result').hidden`)
	assert.Equal(t, fmt.Sprintf("Replayed %d dead letters to their outboxes.", dead), p.text("replay-result"))
	got, backlog := deadLetters(t, admin)
	assert.Zero(t, got, "no dead letters left in Redis")
	assert.Equal(t, dead, backlog, "the letters are back in their outboxes")
	assert.Zero(t, eval[int](p, `document.querySelectorAll('#partitions td.dead.alert').length`))
	after := p.screenshot("#relay-panel")
	requireDrawn(t, after, 400, 150)
	assert.True(t, differs(before, after), "the relay panel looks different once the dead letters are gone")

	// Forget drops the key: the next call is 401 again and the page asks.
	p.do(chromedp.Click(chromedp.ID("token-forget")))
	p.until(`!document.getElementById('token-prompt').hidden`)

	// Without keys the same page just works: no token asked for.
	open, err := handlers.New(l, handlers.Config{Relay: relayStatus{admin}})
	require.NoError(t, err)
	srvOpen := httptest.NewServer(open)
	t.Cleanup(srvOpen.Close)
	p.do(chromedp.Navigate(srvOpen.URL+"/console"),
		chromedp.SendKeys(chromedp.ID("account-id"), "bob"), chromedp.Click(chromedp.CSS("#account-form button")))
	p.until(`document.querySelectorAll('#balances tbody tr').length === 1 && document.getElementById('relay-totals').textContent !== ''`)
	assert.Equal(t, [][]string{{"USD", "250", "0", "250"}}, p.rows("balances"))
	assert.True(t, eval[bool](p, `document.getElementById('token-prompt').hidden`))
	assert.Equal(t, "#account=bob", eval[string](p, `location.hash`), "a lookup is a shareable link")

	// A deep link opens the page on its account.
	// (A query makes it a new document: the page is already at /console#account=bob.)
	p.do(chromedp.Navigate(srvOpen.URL + "/console?from=alert#account=bob"))
	p.until(`document.querySelectorAll('#balances tbody tr').length === 1`)
	assert.Equal(t, [][]string{{"USD", "250", "0", "250"}}, p.rows("balances"))
	assert.Equal(t, "bob", eval[string](p, `document.getElementById('account-id').value`))
}
