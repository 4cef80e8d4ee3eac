package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// httpDriver runs the operations against a running `tally serve`, as its clients would:
// through the typed Go client (package client), one per replica, with retries off (the
// bench counts every answer) and, for deposits and withdrawals, no Idempotency-Key (as the
// independent load generators of docs/benchmarks.md send none).
type httpDriver struct {
	bases   []string         // one per replica, without a trailing slash
	clients []*client.Client // one per base
	next    atomic.Uint64
	pin     bool         // a worker's requests go to one replica (Config.Spread "worker")
	http    *http.Client // shared by the clients, and for /metrics
}

// newHTTPDriver returns a driver of the comma-separated targets with room for conns
// keep-alive connections, or an error for a target that is not an http(s) URL.
func newHTTPDriver(target, apiKey string, conns int, timeout time.Duration, pin bool) (*httpDriver, error) {
	d := &httpDriver{bases: targets(target), http: newHTTPClient(conns, timeout), pin: pin}
	for _, b := range d.bases {
		c, err := client.New(b, client.WithHTTPClient(d.http), client.WithAPIKey(apiKey),
			client.WithRetry(client.RetryPolicy{MaxAttempts: 1}), client.WithUserAgent("tally-bench"))
		if err != nil {
			return nil, fmt.Errorf("bench: --target: %w", err)
		}
		d.clients = append(d.clients, c)
	}
	return d, nil
}

// close releases the driver's idle connections.
func (d *httpDriver) close() { d.http.CloseIdleConnections() }

// api returns the client of the replica the next request goes to: in turn, or with pin
// the replica of the worker ctx names (withWorker).
func (d *httpDriver) api(ctx context.Context) *client.Client {
	n := uint64(len(d.clients))
	if n == 1 {
		return d.clients[0]
	}
	if w, ok := ctx.Value(workerKey{}).(int); ok && d.pin {
		return d.clients[uint64(w)%n]
	}
	return d.clients[(d.next.Add(1)-1)%n]
}

// workerKey is the context key of the worker an operation runs for.
type workerKey struct{}

// withWorker returns ctx naming worker w, for drivers that keep a worker on one replica.
func withWorker(ctx context.Context, w int) context.Context {
	return context.WithValue(ctx, workerKey{}, w)
}

// answerErr turns a client error into what Classify reads: a *ProblemError for an answer
// (status >= 400), ctx's error when ctx ended, and a *TransportError otherwise (no answer,
// or one the client could not read: the outcome is unknown).
func answerErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var e *client.Error
	switch {
	case errors.As(err, &e):
		code := e.Code
		if code == "" {
			code = "http_" + strconv.Itoa(e.Status)
		}
		return &ProblemError{Status: e.Status, Code: code, Detail: e.Detail}
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return &TransportError{Err: err}
	}
}

// status is the HTTP status of a call's outcome for the bench's tables: 0 without an answer.
func status(err error, ok int) int {
	var pe *ProblemError
	switch {
	case err == nil:
		return ok
	case errors.As(err, &pe):
		return pe.Status
	default:
		return 0
	}
}

func (d *httpDriver) open(ctx context.Context, id string, seed int64) error {
	c := d.api(ctx)
	if _, err := c.OpenAccount(ctx, client.OpenAccountRequest{ID: id}, client.WithIdempotencyKey("open")); err != nil {
		return answerErr(ctx, err)
	}
	if seed <= 0 {
		return nil
	}
	_, err := c.Deposit(ctx, id, currency, seed, client.WithIdempotencyKey("seed"))
	return answerErr(ctx, err)
}

func (d *httpDriver) deposit(ctx context.Context, account string, amount int64) error {
	_, err := d.api(ctx).Deposit(ctx, account, currency, amount, client.WithoutIdempotencyKey())
	return answerErr(ctx, err)
}

func (d *httpDriver) withdraw(ctx context.Context, account string, amount int64) error {
	_, err := d.api(ctx).Withdraw(ctx, account, currency, amount, client.WithoutIdempotencyKey())
	return answerErr(ctx, err)
}

// transfer creates a transfer and returns its status: completed, refunded or pending.
func (d *httpDriver) transfer(ctx context.Context, id, from, to string, amount int64) (string, error) {
	t, err := d.api(ctx).CreateTransfer(ctx, client.TransferRequest{ID: id, From: from, To: to, Currency: currency, Amount: amount})
	if err != nil {
		return "", answerErr(ctx, err)
	}
	if t.Status == "" {
		return "", &TransportError{Err: fmt.Errorf("transfer %s: answer without a status", id)}
	}
	return t.Status, nil
}

// getTransfer returns a transfer's status.
func (d *httpDriver) getTransfer(ctx context.Context, id string) (string, error) {
	t, err := d.api(ctx).Transfer(ctx, id)
	if err != nil {
		return "", answerErr(ctx, err)
	}
	return t.Status, nil
}

// batch sends a batch and returns its per-operation statuses.
func (d *httpDriver) batch(ctx context.Context, req client.BatchRequest) ([]int, error) {
	b, err := d.api(ctx).Batch(ctx, req, client.WithoutIdempotencyKey())
	if err != nil {
		return nil, answerErr(ctx, err)
	}
	out := make([]int, len(b.Results))
	for i, r := range b.Results {
		out[i] = r.Status
	}
	return out, nil
}

func (d *httpDriver) placeHold(ctx context.Context, account, id string, amount int64) error {
	_, err := d.api(ctx).PlaceHold(ctx, account, client.HoldRequest{ID: id, Currency: currency, Amount: amount, TimeoutSeconds: int64(holdTimeout / time.Second)})
	return answerErr(ctx, err)
}

func (d *httpDriver) captureHold(ctx context.Context, account, id string) error {
	_, err := d.api(ctx).CaptureHold(ctx, account, id, client.CaptureRequest{}, client.WithoutIdempotencyKey())
	return answerErr(ctx, err)
}

func (d *httpDriver) voidHold(ctx context.Context, account, id string) error {
	_, err := d.api(ctx).VoidHold(ctx, account, id, client.WithoutIdempotencyKey())
	return answerErr(ctx, err)
}

func (d *httpDriver) hold(ctx context.Context, account, id string) (string, error) {
	h, err := d.api(ctx).Hold(ctx, account, id)
	if err != nil {
		return "", answerErr(ctx, err)
	}
	return h.Status, nil
}

func (d *httpDriver) account(ctx context.Context, id string) (*ledger.Account, error) {
	a, err := d.api(ctx).Account(ctx, id)
	if err != nil {
		return nil, answerErr(ctx, err)
	}
	out := &ledger.Account{ID: a.ID, Version: a.Version, Status: a.Status, AllowNegative: a.AllowNegative,
		Balances: make(map[string]ledger.Balance, len(a.Balances))}
	for cur, b := range a.Balances {
		out.Balances[cur] = ledger.Balance{Posted: b.Posted, Held: b.Held, Available: b.Available}
	}
	return out, nil
}

// replay reads the account's whole event stream over HTTP and adds up its money events.
func (d *httpDriver) replay(ctx context.Context, id string) (*ledger.Account, error) {
	var all []ledger.Event
	for e, err := range d.api(ctx).AllEvents(ctx, id, 0, ledger.MaxEventsPage) {
		if err != nil {
			return nil, answerErr(ctx, err)
		}
		all = append(all, ledger.Event{ID: e.ID, Type: e.Type, Account: e.Account, Version: e.Version, Time: e.Time, Data: e.Data})
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
		case ledger.EventOverdraftLimitSet, ledger.EventAlertCreated, ledger.EventAlertDeleted, ledger.EventBalanceAlert:
			// Limits and alerts move no money (the bench sets none, but a server may).
		default:
			return nil, fmt.Errorf("%s: unknown event type %q", id, e.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: event %d: %w", id, e.Version, err)
		}
	}
	return a, nil
}

// stats reads the servers' ledger counters from their /metrics (Prometheus text format,
// no authentication), summed over the replicas. ok is false when one cannot be read.
func (d *httpDriver) stats(ctx context.Context) (ledger.Stats, bool) {
	var s ledger.Stats
	fields := map[string]*int64{
		"tally_ledger_commits_total":           &s.Commits,
		"tally_ledger_operations_total":        &s.Operations,
		"tally_ledger_version_conflicts_total": &s.Conflicts,
		"tally_ledger_retries_total":           &s.Retries,
		"tally_ledger_lock_failures_total":     &s.LockFailures,
	}
	for _, base := range d.bases {
		page, err := d.metricsOf(ctx, base)
		if err != nil {
			return ledger.Stats{}, false
		}
		for name, p := range fields {
			v, found := promValue(page, name)
			if !found {
				return ledger.Stats{}, false
			}
			*p += int64(v)
		}
	}
	return s, true
}

// serverCPU returns the CPU time the servers used so far: the sum of every replica's
// process_cpu_seconds_total. ok is false when a replica's cannot be read.
func (d *httpDriver) serverCPU(ctx context.Context) (total time.Duration, ok bool) {
	vs, ok := d.replicaValues(ctx, "process_cpu_seconds_total")
	for _, v := range vs {
		total += time.Duration(v * float64(time.Second))
	}
	return total, ok
}

// serverRSS returns the largest resident set of the replicas now, in bytes
// (process_resident_memory_bytes). ok is false when a replica's cannot be read.
func (d *httpDriver) serverRSS(ctx context.Context) (largest float64, ok bool) {
	vs, ok := d.replicaValues(ctx, "process_resident_memory_bytes")
	for _, v := range vs {
		largest = max(largest, v)
	}
	return largest, ok
}

// replicaValues reads the sample name from every replica's /metrics; ok is false (and
// the values nil) when one cannot be read.
func (d *httpDriver) replicaValues(ctx context.Context, name string) ([]float64, bool) {
	vs := make([]float64, 0, len(d.bases))
	for _, base := range d.bases {
		b, err := d.metricsOf(ctx, base)
		if err != nil {
			return nil, false
		}
		v, found := promValue(b, name)
		if !found {
			return nil, false
		}
		vs = append(vs, v)
	}
	return vs, true
}

// metricsOf reads the /metrics page of the replica at base (not part of the API, so not
// in the client).
func (d *httpDriver) metricsOf(ctx context.Context, base string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return b, err
}
