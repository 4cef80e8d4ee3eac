package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// httpDriver runs the operations against a running `tally serve`, as its clients would.
type httpDriver struct {
	bases  []string // one per replica, without a trailing slash
	next   atomic.Uint64
	apiKey string
	client *http.Client
}

// base returns the replica the next request goes to (in turn).
func (d *httpDriver) base() string {
	if len(d.bases) == 1 {
		return d.bases[0]
	}
	return d.bases[(d.next.Add(1)-1)%uint64(len(d.bases))]
}

// send sends one request and returns the answer's status and body, whatever the status;
// err is a *TransportError (or ctx's error) when no answer came.
func (d *httpDriver) send(ctx context.Context, method, path, idemKey string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base()+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	if d.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+d.apiKey)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return 0, nil, &TransportError{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body) // read to the end, so that the connection is reused
	if err != nil {
		return 0, nil, &TransportError{Err: err}
	}
	return resp.StatusCode, b, nil
}

// do is send with a problem+json answer (status >= 400) returned as a *ProblemError.
func (d *httpDriver) do(ctx context.Context, method, path, idemKey string, body []byte) (int, []byte, error) {
	status, b, err := d.send(ctx, method, path, idemKey, body)
	if err != nil || status < 400 {
		return status, b, err
	}
	var p struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	}
	if json.Unmarshal(b, &p) != nil || p.Code == "" {
		p.Code = "http_" + strconv.Itoa(status)
		p.Detail = string(bytes.TrimSpace(b))
	}
	return status, b, &ProblemError{Status: status, Code: p.Code, Detail: p.Detail}
}

func (d *httpDriver) post(ctx context.Context, path, idemKey string, body []byte) ([]byte, error) {
	if body == nil {
		body = []byte("{}")
	}
	_, b, err := d.do(ctx, http.MethodPost, path, idemKey, body)
	return b, err
}

func (d *httpDriver) get(ctx context.Context, path string, into any) error {
	_, b, err := d.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, into); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

func (d *httpDriver) open(ctx context.Context, id string, seed int64) error {
	if _, err := d.post(ctx, "/v1/accounts", "open", fmt.Appendf(nil, `{"id":%q}`, id)); err != nil {
		return err
	}
	if seed <= 0 {
		return nil
	}
	_, err := d.post(ctx, "/v1/accounts/"+url.PathEscape(id)+"/deposits", "seed", money(seed))
	return err
}

func money(amount int64) []byte {
	return fmt.Appendf(nil, `{"currency":%q,"amount":%d}`, currency, amount)
}

func (d *httpDriver) deposit(ctx context.Context, account string, amount int64) error {
	_, err := d.post(ctx, "/v1/accounts/"+url.PathEscape(account)+"/deposits", "", money(amount))
	return err
}

func (d *httpDriver) withdraw(ctx context.Context, account string, amount int64) error {
	_, err := d.post(ctx, "/v1/accounts/"+url.PathEscape(account)+"/withdrawals", "", money(amount))
	return err
}

func (d *httpDriver) transfer(ctx context.Context, id, from, to string, amount int64) (string, error) {
	b, err := d.post(ctx, "/v1/transfers", "", fmt.Appendf(nil, `{"id":%q,"from":%q,"to":%q,"currency":%q,"amount":%d}`, id, from, to, currency, amount))
	if err != nil {
		return "", err
	}
	var t struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(b, &t); err != nil || t.Status == "" {
		return "", &TransportError{Err: fmt.Errorf("transfer %s: unreadable answer %q", id, b)}
	}
	return t.Status, nil
}

func (d *httpDriver) placeHold(ctx context.Context, account, id string, amount int64) error {
	_, err := d.post(ctx, "/v1/accounts/"+url.PathEscape(account)+"/holds", "",
		fmt.Appendf(nil, `{"id":%q,"currency":%q,"amount":%d,"timeout_seconds":%d}`, id, currency, amount, int(holdTimeout/time.Second)))
	return err
}

func (d *httpDriver) holdPath(account, id string) string {
	return "/v1/accounts/" + url.PathEscape(account) + "/holds/" + url.PathEscape(id)
}

func (d *httpDriver) captureHold(ctx context.Context, account, id string) error {
	_, err := d.post(ctx, d.holdPath(account, id)+"/capture", "", nil)
	return err
}

func (d *httpDriver) voidHold(ctx context.Context, account, id string) error {
	_, err := d.post(ctx, d.holdPath(account, id)+"/void", "", nil)
	return err
}

func (d *httpDriver) hold(ctx context.Context, account, id string) (string, error) {
	var h struct {
		Status string `json:"status"`
	}
	if err := d.get(ctx, d.holdPath(account, id), &h); err != nil {
		return "", err
	}
	return h.Status, nil
}

func (d *httpDriver) account(ctx context.Context, id string) (*ledger.Account, error) {
	var a ledger.Account
	if err := d.get(ctx, "/v1/accounts/"+url.PathEscape(id), &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// replay reads the account's whole event stream over HTTP and adds up its money events.
func (d *httpDriver) replay(ctx context.Context, id string) (*ledger.Account, error) {
	var all []ledger.Event
	after := int64(0)
	for {
		var page struct {
			Events []ledger.Event `json:"events"`
			Next   *int64         `json:"next"`
		}
		if err := d.get(ctx, fmt.Sprintf("/v1/accounts/%s/events?after=%d&limit=%d", url.PathEscape(id), after, ledger.MaxEventsPage), &page); err != nil {
			return nil, err
		}
		all = append(all, page.Events...)
		if page.Next == nil || len(page.Events) == 0 {
			break
		}
		after = *page.Next
	}
	return replayMoney(id, all)
}

// replayMoney rebuilds an account's version, status and per-currency posted and held
// amounts from its events (the bench's own reading of the event types, independent of
// the ledger's), with available = posted − held.
func replayMoney(id string, events []ledger.Event) (*ledger.Account, error) {
	a := &ledger.Account{ID: id, Status: ledger.StatusOpen, Balances: map[string]ledger.Balance{}}
	add := func(c string, posted, held int64) {
		b := a.Balances[c]
		b.Posted += posted
		b.Held += held
		b.Available = b.Posted - b.Held
		a.Balances[c] = b
	}
	for _, e := range events {
		if e.Version != a.Version+1 {
			return nil, fmt.Errorf("%s: event version %d follows %d", id, e.Version, a.Version)
		}
		a.Version = e.Version
		var err error
		switch e.Type {
		case ledger.EventAccountOpened:
			var d ledger.OpenedData
			err = json.Unmarshal(e.Data, &d)
			a.AllowNegative = d.AllowNegative
		case ledger.EventAccountClosed:
			a.Status = ledger.StatusClosed
		case ledger.EventDeposited, ledger.EventWithdrawn:
			var d ledger.MoneyData
			err = json.Unmarshal(e.Data, &d)
			if e.Type == ledger.EventDeposited {
				add(d.Currency, d.Amount, 0)
			} else {
				add(d.Currency, -d.Amount, 0)
			}
		case ledger.EventTransferDebited, ledger.EventTransferCredited, ledger.EventTransferRefunded:
			var d ledger.TransferData
			err = json.Unmarshal(e.Data, &d)
			if e.Type == ledger.EventTransferDebited {
				add(d.Currency, -d.Amount, 0)
			} else {
				add(d.Currency, d.Amount, 0)
			}
		case ledger.EventHoldPlaced:
			var d ledger.HoldData
			err = json.Unmarshal(e.Data, &d)
			add(d.Currency, 0, d.Amount)
		case ledger.EventHoldCaptured:
			var d ledger.HoldData
			err = json.Unmarshal(e.Data, &d)
			add(d.Currency, -d.Captured, -d.Amount)
		case ledger.EventHoldVoided, ledger.EventHoldExpired:
			var d ledger.HoldData
			err = json.Unmarshal(e.Data, &d)
			add(d.Currency, 0, -d.Amount)
		default:
			return nil, fmt.Errorf("%s: unknown event type %q", id, e.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: event %d: %w", id, e.Version, err)
		}
	}
	return a, nil
}

// stats reads the server's ledger counters from its /metrics (Prometheus text format, no
// authentication). ok is false when they cannot be read.
func (d *httpDriver) stats(ctx context.Context) (ledger.Stats, bool) {
	_, b, err := d.do(ctx, http.MethodGet, "/metrics", "", nil)
	if err != nil {
		return ledger.Stats{}, false
	}
	var s ledger.Stats
	fields := map[string]*int64{
		"tally_ledger_commits_total":           &s.Commits,
		"tally_ledger_operations_total":        &s.Operations,
		"tally_ledger_version_conflicts_total": &s.Conflicts,
		"tally_ledger_retries_total":           &s.Retries,
		"tally_ledger_lock_failures_total":     &s.LockFailures,
	}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, " ")
		if p := fields[name]; ok && p != nil {
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				return ledger.Stats{}, false
			}
			*p = int64(v)
			found++
		}
	}
	return s, found == len(fields)
}
