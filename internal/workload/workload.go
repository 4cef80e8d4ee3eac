// Package workload drives randomized concurrent write traffic — keyless and keyed writes,
// bursts of duplicates that share an Idempotency-Key (with the same and with other bodies),
// cancellations — against a ledger, and checks what must hold afterwards: each key applies
// at most once, every success for a key carries one identical body, every balance is the sum
// of the distinct operations applied and never below the overdraft limit, every event
// records the balances the events up to it make, and each alert fires exactly once per
// crossing. Tests run it against the ledger library and the HTTP
// API on every Redis the project supports.
//
// Every logical operation gets an amount no other operation has, so each event in an
// account's stream can be traced back to the one operation that produced it.
package workload

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// Kinds of operations.
const (
	Deposit    = "deposit"
	Withdrawal = "withdrawal"
)

// Currency is the currency every operation uses.
const Currency = "USD"

// Op is one write request.
type Op struct {
	Account string
	Kind    string // Deposit or Withdrawal
	Amount  int64  // unique per logical operation
	Key     string // Idempotency-Key; "" for a keyless write
	// CancelAfter, when positive, cancels the request's context after that long.
	CancelAfter time.Duration
}

// Outcome classifies what a request got back.
type Outcome int

const (
	// Applied: the write succeeded (201); Body is the response.
	Applied Outcome = iota + 1
	// Rejected: a 4xx the caller can rely on: the request, and every copy of it sent with
	// its Idempotency-Key before or after, applies nothing. Code says why.
	Rejected
	// Unknown: cancelled, timed out or 503 — the write may or may not have happened.
	Unknown
)

// Result is what one request got back.
type Result struct {
	Outcome Outcome
	Body    []byte // Applied: the response body
	Code    string // Rejected/Unknown: the problem code or error text
}

// Alert is a threshold alert on the available balance in Currency that the run puts on
// every account (Config.Alerts): "below" fires when a write takes the balance from ≥
// Threshold to < Threshold, "above" from ≤ Threshold to > Threshold.
type Alert struct {
	ID        string
	Below     bool
	Threshold int64
}

// crossed reports whether a change of the balance from before to after crosses a.
func (a Alert) crossed(before, after int64) bool {
	if a.Below {
		return before >= a.Threshold && after < a.Threshold
	}
	return before <= a.Threshold && after > a.Threshold
}

// Setup is how the run opens every account.
type Setup struct {
	OverdraftLimit int64 // in Currency; 0 for none
	Alerts         []Alert
}

// AppliedOp is one money event of an account's stream.
type AppliedOp struct {
	OperationID string
	Kind        string // Deposit or Withdrawal
	Amount      int64
}

// Target is what the workload drives: the ledger library or the HTTP API.
type Target interface {
	// OpenAccount opens an account (without allow_negative) as s says, with its alerts.
	OpenAccount(ctx context.Context, id string, s Setup) error
	// Do sends one write. Errors the checker does not expect (500, a Go error that is not
	// a domain error) are returned as Rejected with a code the checker refuses.
	Do(ctx context.Context, op Op) Result
	// Events returns every event of an account, in order.
	Events(ctx context.Context, account string) ([]ledger.Event, error)
	// Posted returns the account's posted balance in Currency.
	Posted(ctx context.Context, account string) (int64, error)
}

// Config shapes a run.
type Config struct {
	Seed     uint64
	Accounts int // accounts written to; few accounts mean more contention
	Rounds   int // rounds run one after another; each starts all its requests at once
	Keyless  int // keyless writes per round
	Keys     int // keys per round (each sent as a burst of duplicates)
	Burst    int // largest number of copies of one keyed request per round (at least 2)
	// OtherBody is the chance that a copy of a keyed request carries another body.
	OtherBody float64
	// Cancel is the chance that a request is cancelled after a random 0–3ms.
	Cancel float64
	// Prefix makes account IDs unique per run.
	Prefix string
	// Overdraft is every account's overdraft limit (0: none): balances may go down to it.
	Overdraft int64
	// Alerts are put on every account; the check requires exactly one BalanceAlert per
	// crossing, right after the write that crossed.
	Alerts []Alert
}

// Report is what a run observed, for the test log.
type Report struct {
	Requests, Applied, Rejected, Unknown, Replays int
	Codes                                         map[string]int
}

// logical is one logical operation: a keyless request, or one (key, body) variant.
type logical struct {
	op      Op
	results []Result
}

// Run opens the accounts, sends the rounds and checks every invariant. It returns the
// report and the first violation found (nil when all hold).
func Run(ctx context.Context, t Target, cfg Config) (Report, error) {
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	accounts := make([]string, cfg.Accounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("%sacct%d", cfg.Prefix, i)
		if err := t.OpenAccount(ctx, accounts[i], Setup{OverdraftLimit: cfg.Overdraft, Alerts: cfg.Alerts}); err != nil {
			return Report{}, fmt.Errorf("open %s: %w", accounts[i], err)
		}
	}
	var (
		next    int64 = 1 // next unique amount
		byAmt         = map[int64]*logical{}
		keyOps        = map[string][]*logical{} // account+key → its variants
		keyAcct       = map[string]string{}     // key → its account
		rep           = Report{Codes: map[string]int{}}
		newOp         = func(acct, kind, key string) *logical {
			l := &logical{op: Op{Account: acct, Kind: kind, Amount: next, Key: key}}
			next++
			byAmt[l.op.Amount] = l
			if key != "" {
				keyOps[acct+"\x00"+key] = append(keyOps[acct+"\x00"+key], l)
			}
			return l
		}
		kind = func() string {
			if rng.IntN(3) == 0 {
				return Withdrawal
			}
			return Deposit
		}
	)
	for round := 0; round < cfg.Rounds; round++ {
		type send struct {
			l  *logical
			op Op
		}
		var sends []send
		for i := 0; i < cfg.Keyless; i++ {
			l := newOp(accounts[rng.IntN(len(accounts))], kind(), "")
			sends = append(sends, send{l, l.op})
		}
		for k := 0; k < cfg.Keys; k++ {
			acct := accounts[rng.IntN(len(accounts))]
			key := fmt.Sprintf("r%d-k%d", round, k)
			if round > 0 && rng.IntN(4) == 0 {
				earlier := fmt.Sprintf("r%d-k%d", rng.IntN(round), k) // retry a key of an earlier round
				if a, ok := keyAcct[earlier]; ok {
					key, acct = earlier, a
				}
			}
			keyAcct[key] = acct
			variants := keyOps[acct+"\x00"+key]
			var first *logical
			if len(variants) > 0 {
				first = variants[0]
			} else {
				first = newOp(acct, kind(), key)
			}
			copies := 2 + rng.IntN(max(cfg.Burst-1, 1))
			for c := 0; c < copies; c++ {
				l := first
				if c > 0 && rng.Float64() < cfg.OtherBody {
					l = newOp(acct, first.op.Kind, key)
				}
				sends = append(sends, send{l, l.op})
			}
		}
		rng.Shuffle(len(sends), func(i, j int) { sends[i], sends[j] = sends[j], sends[i] })
		for i := range sends {
			if rng.Float64() < cfg.Cancel {
				sends[i].op.CancelAfter = time.Duration(rng.IntN(3000)+1) * time.Microsecond
			}
		}
		results := make([]Result, len(sends))
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, s := range sends {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				rctx, cancel := context.WithCancel(ctx)
				defer cancel()
				if s.op.CancelAfter > 0 {
					timer := time.AfterFunc(s.op.CancelAfter, cancel)
					defer timer.Stop()
				}
				results[i] = t.Do(rctx, s.op)
			}()
		}
		close(start)
		wg.Wait()
		for i, s := range sends {
			r := results[i]
			s.l.results = append(s.l.results, r)
			rep.Requests++
			switch r.Outcome {
			case Applied:
				rep.Applied++
			case Rejected:
				rep.Rejected++
				rep.Codes[r.Code]++
			default:
				rep.Unknown++
				rep.Codes[r.Code]++
			}
		}
	}
	return rep, check(ctx, t, cfg, accounts, byAmt, keyOps)
}

// allowedRejections are the 4xx codes a request of this workload may get.
var allowedRejections = map[string]bool{"insufficient_funds": true, "idempotency_key_reused": true}

func check(ctx context.Context, t Target, cfg Config, accounts []string, byAmt map[int64]*logical, keyOps map[string][]*logical) error {
	applied := map[*logical]string{} // logical op → operation ID of its event
	for _, acct := range accounts {
		events, err := t.Events(ctx, acct)
		if err != nil {
			return err
		}
		if err := checkStream(acct, events, cfg.Alerts); err != nil {
			return err
		}
		ops, err := Money(events)
		if err != nil {
			return err
		}
		var sum int64
		for _, a := range ops {
			l := byAmt[a.Amount]
			switch {
			case l == nil || l.op.Account != acct || l.op.Kind != a.Kind:
				return fmt.Errorf("%s: event %s (%s %d) belongs to no request of this account", acct, a.OperationID, a.Kind, a.Amount)
			case applied[l] != "":
				return fmt.Errorf("%s: %s %d (key %q) applied twice: events %s and %s", acct, a.Kind, a.Amount, l.op.Key, applied[l], a.OperationID)
			}
			applied[l] = a.OperationID
			if a.Kind == Deposit {
				sum += a.Amount
			} else {
				sum -= a.Amount
			}
			if sum < -cfg.Overdraft {
				return fmt.Errorf("%s: balance went below −%d (%d) at %s", acct, cfg.Overdraft, sum, a.OperationID)
			}
		}
		posted, err := t.Posted(ctx, acct)
		if err != nil {
			return err
		}
		if posted != sum {
			return fmt.Errorf("%s: posted balance %d, but the distinct applied operations sum to %d", acct, posted, sum)
		}
	}
	for _, l := range byAmt {
		for _, r := range l.results {
			switch r.Outcome {
			case Applied:
				var body struct {
					OperationID string `json:"operation_id"`
				}
				if err := json.Unmarshal(r.Body, &body); err != nil {
					return fmt.Errorf("undecodable success body %q: %w", r.Body, err)
				}
				if applied[l] != body.OperationID {
					return fmt.Errorf("%s %s %d (key %q) answered 201 with operation %s, but its event is %q",
						l.op.Account, l.op.Kind, l.op.Amount, l.op.Key, body.OperationID, applied[l])
				}
			case Rejected:
				if !allowedRejections[r.Code] {
					return fmt.Errorf("%s %s %d (key %q): unexpected answer %q", l.op.Account, l.op.Kind, l.op.Amount, l.op.Key, r.Code)
				}
				// A refusal is a definite answer, for a keyed request as for a keyless one:
				// no copy of the request may apply, earlier, at once or later.
				if r.Code != "idempotency_key_reused" && applied[l] != "" {
					return fmt.Errorf("%s %s %d (key %q): answered %s, yet applied as %s", l.op.Account, l.op.Kind, l.op.Amount, l.op.Key, r.Code, applied[l])
				}
			}
		}
	}
	keys := make([]string, 0, len(keyOps))
	for k := range keyOps {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var body []byte
		n := 0
		for _, l := range keyOps[k] {
			if applied[l] != "" {
				n++
			}
			for _, r := range l.results {
				if r.Outcome != Applied {
					continue
				}
				if body != nil && !bytes.Equal(body, r.Body) {
					return fmt.Errorf("key %q: two different 201 bodies:\n%s\n%s", k, body, r.Body)
				}
				body = r.Body
			}
		}
		if n > 1 {
			return fmt.Errorf("key %q applied %d times", k, n)
		}
		// A late retry of what was applied replays the same body and applies nothing.
		for _, l := range keyOps[k] {
			if applied[l] == "" {
				continue
			}
			r := t.Do(ctx, l.op)
			if r.Outcome != Applied || (body != nil && !bytes.Equal(body, r.Body)) {
				return fmt.Errorf("key %q: a late retry got %v %s %q, want the first 201 body %q", k, r.Outcome, r.Code, r.Body, body)
			}
		}
	}
	return lateRetriesOfRefusals(ctx, t, accounts[0], keyOps, keys)
}

// lateRetriesOfRefusals checks that a keyed request refused for insufficient funds stays
// refused: the account is first given enough money for it, then the request is sent again
// with its key, and must get the same refusal and apply nothing. (A ledger that records
// only successes would now apply it, after its client was told it failed.) Besides the
// run's keyed refusals, which its random order may leave out, it checks one it makes
// itself on account, so that the check never passes with nothing checked.
func lateRetriesOfRefusals(ctx context.Context, t Target, account string, keyOps map[string][]*logical, keys []string) error {
	// More than the account can hold: the run's amounts count up from 1, far below 2^40.
	sure := &logical{op: Op{Account: account, Kind: Withdrawal, Amount: 1 << 41, Key: "late-refusal"}}
	if r := t.Do(ctx, sure.op); r.Outcome != Rejected || r.Code != "insufficient_funds" {
		return fmt.Errorf("%s: a keyed withdrawal of more than the balance got %v %s %q, want insufficient_funds", account, r.Outcome, r.Code, r.Body)
	}
	refused := []*logical{sure}
	need := map[string]int64{account: sure.op.Amount}
	for _, k := range keys {
		for _, l := range keyOps[k] {
			for _, r := range l.results {
				if r.Outcome == Rejected && r.Code == "insufficient_funds" {
					refused = append(refused, l)
					need[l.op.Account] += l.op.Amount
					break
				}
			}
		}
	}
	accounts := make([]string, 0, len(need))
	for a := range need {
		accounts = append(accounts, a)
	}
	sort.Strings(accounts)
	for i, a := range accounts {
		// An amount no operation of the run has (they count up from 1).
		topUp := Op{Account: a, Kind: Deposit, Amount: need[a] + 1<<40 + int64(i)}
		if r := t.Do(ctx, topUp); r.Outcome != Applied {
			return fmt.Errorf("%s: top-up deposit before the late retries got %v %s", a, r.Outcome, r.Code)
		}
	}
	for _, l := range refused {
		before, err := t.Posted(ctx, l.op.Account)
		if err != nil {
			return err
		}
		r := t.Do(ctx, l.op)
		if r.Outcome != Rejected || r.Code != "insufficient_funds" {
			return fmt.Errorf("%s %s %d (key %q) was refused for insufficient funds; a late retry with the money there got %v %s %q",
				l.op.Account, l.op.Kind, l.op.Amount, l.op.Key, r.Outcome, r.Code, r.Body)
		}
		if after, err := t.Posted(ctx, l.op.Account); err != nil || after != before {
			return fmt.Errorf("%s: a replayed refusal changed the balance from %d to %d (%v)", l.op.Account, before, after, err)
		}
	}
	return nil
}

// checkStream checks what an account's events record besides the money: every event's
// balances (balance history) are the sum of the money events up to it, and a BalanceAlert
// follows each write that crossed an alert's threshold — one per alert crossed, in the
// order of the alert IDs — and nothing else.
func checkStream(acct string, events []ledger.Event, alerts []Alert) error {
	alerts = slices.Clone(alerts)
	slices.SortFunc(alerts, func(a, b Alert) int { return strings.Compare(a.ID, b.ID) })
	var (
		sum    int64
		money  bool     // a money event was seen: the account has a balance in Currency
		expect []string // alerts the last write crossed, not yet seen
		after  string   // that write's event
	)
	for _, e := range events {
		switch e.Type {
		case ledger.EventDeposited, ledger.EventWithdrawn:
			if len(expect) > 0 {
				return fmt.Errorf("%s: %s crossed alert %s, but no BalanceAlert follows it", acct, after, expect[0])
			}
			var d ledger.MoneyData
			if err := json.Unmarshal(e.Data, &d); err != nil {
				return err
			}
			before := sum
			if e.Type == ledger.EventDeposited {
				sum += d.Amount
			} else {
				sum -= d.Amount
			}
			money, after = true, e.ID
			for _, a := range alerts {
				if a.crossed(before, sum) {
					expect = append(expect, a.ID)
				}
			}
		case ledger.EventBalanceAlert:
			var d ledger.BalanceAlertData
			if err := json.Unmarshal(e.Data, &d); err != nil {
				return err
			}
			if len(expect) == 0 || expect[0] != d.AlertID || d.EventID != after {
				return fmt.Errorf("%s: %s is a BalanceAlert of alert %s after %s, which crossed %v", acct, e.ID, d.AlertID, d.EventID, expect)
			}
			expect = expect[1:]
		}
		want := map[string]ledger.Balance{}
		if money {
			want[Currency] = ledger.Balance{Posted: sum, Available: sum}
		}
		if !maps.Equal(e.Balances, want) || e.Balances == nil {
			return fmt.Errorf("%s: event %s records balances %v, the events up to it make %v", acct, e.ID, e.Balances, want)
		}
	}
	if len(expect) > 0 {
		return fmt.Errorf("%s: %s crossed alert %s, but no BalanceAlert follows it", acct, after, expect[0])
	}
	return nil
}

// Money returns the Deposited and Withdrawn events among events as AppliedOps.
func Money(events []ledger.Event) ([]AppliedOp, error) {
	var out []AppliedOp
	for _, e := range events {
		kind := map[string]string{ledger.EventDeposited: Deposit, ledger.EventWithdrawn: Withdrawal}[e.Type]
		if kind == "" {
			continue
		}
		var d ledger.MoneyData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return nil, err
		}
		out = append(out, AppliedOp{OperationID: d.OperationID, Kind: kind, Amount: d.Amount})
	}
	return out, nil
}
