package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/internal/redisx"
	"github.com/tally-ledger/tally/outbox"
)

// VerifyOptions configures Verify. Zero fields take the documented defaults.
type VerifyOptions struct {
	// Group is the relay consumer group whose progress is reported. Default "relay".
	Group string
	// Consumers are the names of outbox.Dedup consumers whose per-account watermarks are
	// checked against the accounts' versions. Nil means the built-in projector
	// (DefaultProjectorName); an empty non-nil slice checks none.
	Consumers []string
	// MaxLag is how old the oldest unacknowledged outbox entry may be, and how long an entry
	// may stay pending without a delivery attempt, before a warning. Default 5m.
	MaxLag time.Duration
	// StuckAfter is how long a cross-partition transfer may stay in flight, and an expired
	// hold stay unswept, before a warning, and how long after its credit a transfer's record
	// may still say pending before a violation. Default 5m.
	StuckAfter time.Duration
	// OutboxSample is how many of the newest entries of each partition's outbox are checked
	// against the accounts' versions. Default 10,000; negative: none.
	OutboxSample int64
	// Attempts bounds the reads of an account whose version keeps moving while its pending
	// holds are compared with their records. Default 5.
	Attempts int
}

func (o VerifyOptions) withDefaults() VerifyOptions {
	if o.Group == "" {
		o.Group = outbox.DefaultGroup
	}
	if o.Consumers == nil {
		o.Consumers = []string{DefaultProjectorName}
	}
	if o.MaxLag == 0 {
		o.MaxLag = 5 * time.Minute
	}
	if o.StuckAfter == 0 {
		o.StuckAfter = 5 * time.Minute
	}
	if o.OutboxSample == 0 {
		o.OutboxSample = 10_000
	}
	if o.Attempts == 0 {
		o.Attempts = 5
	}
	return o
}

// Sums are amounts per currency without a bound: a sum over many accounts may exceed int64.
// They marshal to JSON as decimal strings ({"USD":"18446744073709551614"}), which every JSON
// reader takes without losing precision (a JSON number above 2^53 does not survive
// JavaScript, for one).
type Sums map[string]*big.Int

// MarshalJSON implements json.Marshaler: each amount as a decimal string.
func (s Sums) MarshalJSON() ([]byte, error) {
	out := make(map[string]string, len(s))
	for c, n := range s {
		out[c] = n.String()
	}
	return json.Marshal(out)
}

// UnmarshalJSON implements json.Unmarshaler: decimal strings (or plain JSON integers).
func (s *Sums) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*s = make(Sums, len(raw))
	for c, v := range raw {
		n, ok := new(big.Int).SetString(strings.Trim(string(v), `"`), 10)
		if !ok {
			return fmt.Errorf("ledger: sum of %s: %s is not an integer", c, v)
		}
		(*s)[c] = n
	}
	return nil
}

// Get returns the amount of currency c (zero when absent).
func (s Sums) Get(c string) *big.Int {
	if n := s[c]; n != nil {
		return n
	}
	return new(big.Int)
}

func (s Sums) add(c string, n int64) {
	if s[c] == nil {
		s[c] = new(big.Int)
	}
	s[c].Add(s[c], big.NewInt(n))
}

// Kinds of Problem. Violations (VerifyReport.Problems) break an invariant of DESIGN §10;
// warnings (VerifyReport.Warnings) are operational: work that is late, not work that is
// wrong.
const (
	// Violations.
	ProblemReplayMismatch  = "replay_mismatch"  // replaying the stream does not give the snapshot
	ProblemStreamMismatch  = "stream_mismatch"  // the stream's last version is not the snapshot's
	ProblemBadEvent        = "bad_event"        // an event does not apply (gap, bad data, unknown type)
	ProblemCorruptRecord   = "corrupt_record"   // a snapshot or hold record cannot be read, or is misplaced
	ProblemNegativeBalance = "negative_balance" // available < 0 without allow_negative
	ProblemNotConserved    = "not_conserved"    // posted + in flight != deposits − withdrawals − captured out
	ProblemTransferFlow    = "transfer_flow"    // a transfer's steps do not add up (twice, missing, other amount)
	ProblemHoldRecord      = "hold_record"      // a hold record disagrees with the account's events
	ProblemTransferRecord  = "transfer_record"  // a transfer record disagrees with its steps (status, amount, accounts, pending index)
	ProblemLostEvents      = "lost_events"      // the outbox or a consumer saw versions the account no longer has
	ProblemEventBalances   = "event_balances"   // the balances an event records are not those its replay leaves
	ProblemMetadataIndex   = "metadata_index"   // a metadata lookup index and the records disagree (lookup.go)
	// Warnings.
	ProblemTransferStuck    = "transfer_stuck"      // in flight longer than StuckAfter
	ProblemHoldNotSwept     = "hold_not_swept"      // expired longer than StuckAfter ago, still pending
	ProblemOutboxLag        = "outbox_lag"          // oldest unacknowledged entry older than MaxLag
	ProblemOutboxIdle       = "outbox_idle"         // pending entries without a delivery attempt for MaxLag
	ProblemDeadLetters      = "dead_letters"        // entries that were given up on, waiting for a replay
	ProblemAccountBusy      = "account_busy"        // the account changed during every attempt; holds not compared
	ProblemAccountDisappear = "account_disappeared" // listed by SCAN, gone when read
)

// Problem is one finding of Verify, naming what it concerns.
type Problem struct {
	Kind      string `json:"kind"`
	Account   string `json:"account,omitempty"`
	Partition *int   `json:"partition,omitempty"`
	Transfer  string `json:"transfer,omitempty"`
	Hold      string `json:"hold,omitempty"`
	Currency  string `json:"currency,omitempty"`
	Detail    string `json:"detail"`
}

// String returns the problem on one line: "<kind> account alice (partition 3): <detail>".
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Kind)
	for _, f := range [][2]string{{"account", p.Account}, {"transfer", p.Transfer}, {"hold", p.Hold}, {"currency", p.Currency}} {
		if f[1] != "" {
			fmt.Fprintf(&b, " %s %s", f[0], f[1])
		}
	}
	if p.Partition != nil {
		fmt.Fprintf(&b, " (partition %d)", *p.Partition)
	}
	b.WriteString(": ")
	b.WriteString(p.Detail)
	return b.String()
}

// InFlightTransfer is a cross-partition transfer debited from its source and neither
// credited nor refunded yet, as the verified cut saw it.
type InFlightTransfer struct {
	ID        string    `json:"id"`
	From      string    `json:"from"`
	To        string    `json:"to"`
	Currency  string    `json:"currency"`
	Amount    int64     `json:"amount"`
	DebitedAt time.Time `json:"debited_at"`
}

// HoldCounts counts holds by state as the events recorded them (an expired hold that the
// sweeper has not yet recorded counts as pending).
type HoldCounts struct {
	Pending  int `json:"pending"`
	Captured int `json:"captured"`
	Voided   int `json:"voided"`
	Expired  int `json:"expired"`
}

// OutboxProgress is the delivery state of one partition for the relay group, plus the
// entries pending without a delivery attempt for longer than VerifyOptions.MaxLag.
type OutboxProgress struct {
	outbox.PartitionStatus
	IdlePending int64 `json:"idle_pending"`
}

// VerifyReport is the result of Verify. Money is conserved when, per currency,
// Totals + InFlight = Deposits − Withdrawals − CapturedOut. Held is the part of Totals that
// pending, unexpired holds reserve.
type VerifyReport struct {
	Accounts          int                `json:"accounts"`
	Events            int64              `json:"events"`
	Totals            Sums               `json:"totals"`       // sum of posted balances
	Held              Sums               `json:"held"`         // sum of held amounts
	InFlight          Sums               `json:"in_flight"`    // debited, neither credited nor refunded yet
	Deposits          Sums               `json:"deposits"`     // sum of Deposited
	Withdrawals       Sums               `json:"withdrawals"`  // sum of Withdrawn
	CapturedOut       Sums               `json:"captured_out"` // captures that left the ledger (no destination)
	Transfers         int                `json:"transfers"`
	Pending           int                `json:"pending_transfers"`
	InFlightTransfers []InFlightTransfer `json:"in_flight_transfers"`
	Holds             HoldCounts         `json:"holds"`
	Outbox            []OutboxProgress   `json:"outbox"`
	// Problems are violations of the ledger's invariants; Warnings are late work.
	Problems []Problem `json:"problems"`
	Warnings []Problem `json:"warnings"`
}

// OK reports whether no invariant was violated (warnings do not count).
func (r VerifyReport) OK() bool { return len(r.Problems) == 0 }

// Verify is VerifyWith with the default options.
func (l *Ledger) Verify(ctx context.Context) (VerifyReport, error) {
	return l.VerifyWith(ctx, VerifyOptions{})
}

// VerifyWith audits the ledger, also while it takes writes. For every account (on every
// master of a Cluster) it reads the snapshot together with the stream's last entry in one
// transaction, checks that they agree and that replaying the stream up to the snapshot's
// version yields the snapshot, that no account without allow_negative has a negative
// available balance, and that the hold records agree with the account's events. Across
// accounts it follows every transfer's steps, compares each transfer's record (what GET
// /v1/transfers/{id} answers) with them and checks conservation per currency. Because
// accounts are read one after another, a transfer may be credited in the destination as
// read while its debit came after the source was read; Verify then reads the source on up
// to the debit, so the sums describe one consistent cut. Finally it reports each outbox
// partition's delivery progress and checks that neither the newest outbox entries nor the
// consumers' watermarks name versions an account does not have (events lost after they
// were published), and that the metadata lookup indexes and the records agree.
//
// It returns an error only when Redis fails; findings are in the report.
func (l *Ledger) VerifyWith(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	v := &verifier{l: l, opts: opts.withDefaults(), now: l.cfg.Clock(), cuts: map[string]*cut{}, flows: map[string]*flow{},
		rep: VerifyReport{Totals: Sums{}, Held: Sums{}, InFlight: Sums{}, Deposits: Sums{}, Withdrawals: Sums{}, CapturedOut: Sums{},
			InFlightTransfers: []InFlightTransfer{}, Problems: []Problem{}, Warnings: []Problem{}}}
	ids, err := v.scan(ctx)
	if err != nil {
		return v.rep, err
	}
	for _, id := range ids {
		if err := v.account(ctx, id); err != nil {
			return v.rep, err
		}
	}
	if err := v.closeCut(ctx); err != nil {
		return v.rep, err
	}
	if err := v.transfers(ctx); err != nil {
		return v.rep, err
	}
	if err := v.metadataIndexes(ctx); err != nil {
		return v.rep, err
	}
	v.conservation()
	if err := v.outbox(ctx); err != nil {
		return v.rep, err
	}
	return v.rep, nil
}

// verifier is the state of one Verify run.
type verifier struct {
	l    *Ledger
	opts VerifyOptions
	now  time.Time
	rep  VerifyReport
	// cuts are the accounts as verified: the snapshot and how far its stream was read.
	cuts  map[string]*cut
	flows map[string]*flow
}

// cut is an account's state at the version up to which its events were traced: the
// snapshot's version, or later when closeCut read on.
type cut struct {
	acc *Account
}

// flow tracks one transfer across the streams of its accounts.
type flow struct {
	id, from, to, currency    string
	amount                    int64
	debits, credits, refunded int
	hold                      string // the captured hold, when a capture made it
	debitedAt, finishedAt     time.Time
	mismatch                  string            // the first step that disagreed with the others
	searched                  bool              // closeCut looked for its debit
	metadata                  map[string]string // its record's, once read (see metadataIndexes)
}

func (v *verifier) partition(account string) *int {
	p := v.l.store.keys.partition(account)
	return &p
}

func (v *verifier) problem(p Problem) { v.rep.Problems = append(v.rep.Problems, p) }
func (v *verifier) warning(p Problem) { v.rep.Warnings = append(v.rep.Warnings, p) }

// scan lists every account ID, sorted.
func (v *verifier) scan(ctx context.Context) ([]string, error) {
	var (
		mu    sync.Mutex
		ids   = map[string]bool{} // SCAN may return a key more than once
		stray []string
	)
	prefix := v.l.cfg.Prefix + ":{"
	pattern := prefix + "*}:acct:*"
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			// After the partition tag: an account may be called "acct" too.
			i := strings.Index(k, "}:acct:")
			id := k[i+len("}:acct:"):]
			if strings.Contains(id, ":") { // an account's other keys (its event stream)
				continue
			}
			mu.Lock()
			if k != v.l.store.keys.snapshot(v.l.store.keys.partition(id), id) {
				stray = append(stray, k) // a key the ledger would never write
			} else {
				ids[id] = true
			}
			mu.Unlock()
		}
		return iter.Err()
	}
	if err := redisx.ForEachMaster(ctx, v.l.store.rdb, scan); err != nil { // masters concurrently
		return nil, storeErr(ctx, err)
	}
	sort.Strings(stray)
	for _, k := range stray {
		v.problem(Problem{Kind: ProblemCorruptRecord, Detail: fmt.Sprintf("key %s is not where the ledger keeps any account (wrong partition tag)", k)})
	}
	return slices.Sorted(maps.Keys(ids)), nil
}

// busyRetry spaces the reads of an account that keeps changing.
var busyRetry = backoff.Policy{Base: 5 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.5}

// account verifies one account and traces its events into the run's sums and flows.
func (v *verifier) account(ctx context.Context, id string) error {
	ks := v.l.store.keys
	p := ks.partition(id)
	var (
		snap *Account
		last int64
	)
	for attempt := 1; ; attempt++ {
		// The snapshot and the stream's last entry from one moment (one slot: a transaction).
		tx := v.l.store.rdb.TxPipeline()
		h := tx.HGetAll(ctx, ks.snapshot(p, id))
		tail := tx.XRevRangeN(ctx, ks.events(p, id), "+", "-", 1)
		if _, err := tx.Exec(ctx); err != nil {
			return storeErr(ctx, err)
		}
		var err error
		if snap, err = parseSnapshot(id, h.Val(), v.now); err != nil {
			v.problem(Problem{Kind: ProblemCorruptRecord, Account: id, Partition: &p, Detail: err.Error()})
			return nil
		}
		last = 0
		if xs := tail.Val(); len(xs) > 0 {
			last, _ = idMillis(xs[0].ID)
		}
		if !snap.exists() && last == 0 {
			v.warning(Problem{Kind: ProblemAccountDisappear, Account: id, Partition: &p, Detail: "listed by SCAN, but neither snapshot nor events exist now"})
			return nil
		}
		same, err := v.pendingHolds(ctx, snap, attempt == v.opts.Attempts)
		if err != nil {
			return err
		}
		if same {
			break
		}
		if err := backoff.Wait(ctx, busyRetry.Delay(attempt)); err != nil {
			return err
		}
	}
	if last != snap.Version {
		v.problem(Problem{Kind: ProblemStreamMismatch, Account: id, Partition: &p,
			Detail: fmt.Sprintf("the event stream ends at version %d, the snapshot is at version %d (read together)", last, snap.Version)})
	}
	v.rep.Accounts++
	c := &cut{acc: snap.clone()}
	v.cuts[id] = c
	for cur, b := range snap.Balances {
		v.rep.Held.add(cur, b.Held)
	}

	// Replay the stream up to the snapshot's version: what follows was written after the
	// snapshot was read, and an event once written never changes.
	replayed := &Account{ID: id, Balances: map[string]Balance{}}
	holds := map[string]*Hold{} // every hold the events mention, in its state at the snapshot's version
	wrongBalances := false
	// The largest overdraft limit each currency ever had: a limit lowered below what the
	// account owes only stops further spending, so the balance may sit below the current one.
	limits := map[string]int64{}
	err := v.events(ctx, id, 0, snap.Version, func(e Event) (bool, error) {
		if err := replayed.apply(e); err != nil {
			return false, err
		}
		if e.Balances != nil && !wrongBalances {
			// What balance history answers for this version (GET .../balances).
			replayed.settle(e.Time)
			if !maps.Equal(e.Balances, replayed.Balances) {
				wrongBalances = true // one finding per account is enough to look
				v.problem(Problem{Kind: ProblemEventBalances, Account: id, Partition: &p,
					Detail: fmt.Sprintf("event %s records balances %v, its replay leaves %v", e.ID, e.Balances, replayed.Balances)})
			}
		}
		for cur, n := range replayed.OverdraftLimit {
			limits[cur] = max(limits[cur], n)
		}
		return false, v.trace(e, holds)
	})
	var bad *badEventError
	if errors.As(err, &bad) {
		v.problem(Problem{Kind: ProblemBadEvent, Account: id, Partition: &p, Detail: fmt.Sprintf("replay: %v", bad.err)})
		return nil
	}
	if err != nil {
		return err
	}
	v.rep.Events += replayed.Version
	for _, cur := range snap.currencies() {
		if b := snap.Balances[cur]; !snap.AllowNegative && b.Available < -limits[cur] {
			v.problem(Problem{Kind: ProblemNegativeBalance, Account: id, Partition: &p, Currency: cur,
				Detail: fmt.Sprintf("available balance %d (posted %d, held %d) without allow_negative, below −%d (the largest overdraft limit it had)",
					b.Available, b.Posted, b.Held, limits[cur])})
		}
	}
	replayed.settle(v.now)
	if snap.last == 0 {
		replayed.last = 0 // a snapshot last written before Tally kept the last event's time
	}
	if diff := snap.diff(replayed); diff != "" {
		v.problem(Problem{Kind: ProblemReplayMismatch, Account: id, Partition: &p,
			Detail: fmt.Sprintf("snapshot (version %d) differs from its replay (version %d): %s", snap.Version, replayed.Version, diff)})
	}
	return v.resolvedHolds(ctx, id, holds)
}

// events hands the events of account id with versions in (after, until] to visit, in
// order, until visit says stop. until < 0 means to the end of the stream. An event that
// cannot be decoded, or that visit refuses, ends it with a *badEventError.
func (v *verifier) events(ctx context.Context, id string, after, until int64, visit func(Event) (stop bool, err error)) error {
	key := v.l.store.keys.events(v.l.store.keys.partition(id), id)
	end := "+"
	if until >= 0 {
		if until <= after {
			return nil
		}
		end = strconv.FormatInt(until, 10) + "-0"
	}
	for {
		xs, err := v.l.store.rdb.XRangeN(ctx, key, strconv.FormatInt(after+1, 10)+"-0", end, MaxEventsPage).Result()
		if err != nil {
			return storeErr(ctx, err)
		}
		for _, x := range xs {
			e, err := decodeStreamEntry(x.Values)
			if err != nil {
				return &badEventError{fmt.Errorf("entry %s: %w", x.ID, err)}
			}
			stop, err := visit(e)
			if err != nil {
				return &badEventError{err}
			}
			if stop {
				return nil
			}
			after = e.Version
		}
		if len(xs) < MaxEventsPage {
			return nil
		}
	}
}

// trace adds an event to the run's sums and transfer flows, and to holds (the account's
// holds by ID, in the state its events give them).
func (v *verifier) trace(e Event, holds map[string]*Hold) error {
	switch e.Type {
	case EventDeposited, EventWithdrawn:
		var d MoneyData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		if e.Type == EventDeposited {
			v.rep.Deposits.add(d.Currency, d.Amount)
		} else {
			v.rep.Withdrawals.add(d.Currency, d.Amount)
		}
	case EventTransferDebited, EventTransferCredited, EventTransferRefunded:
		var d TransferData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		v.step(e, d)
	case EventHoldPlaced, EventHoldCaptured, EventHoldVoided, EventHoldExpired:
		var d HoldData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		h := holds[d.HoldID]
		if h == nil {
			h = &Hold{ID: d.HoldID, Account: e.Account, Currency: d.Currency, Amount: d.Amount, ExpiresAt: d.ExpiresAt}
			holds[d.HoldID] = h
		}
		switch e.Type {
		case EventHoldPlaced:
			h.Status = HoldPending
			v.rep.Holds.Pending++
		case EventHoldCaptured:
			h.Status, h.Captured, h.To, h.TransferID = HoldCaptured, d.Captured, d.To, d.TransferID
			v.rep.Holds.Pending--
			v.rep.Holds.Captured++
			if d.To == "" {
				v.rep.CapturedOut.add(d.Currency, d.Captured)
			} else {
				v.step(e, TransferData{TransferID: d.TransferID, From: e.Account, To: d.To, Currency: d.Currency, Amount: d.Captured})
				v.flows[d.TransferID].hold = d.HoldID
			}
		case EventHoldVoided:
			h.Status = HoldVoided
			v.rep.Holds.Pending--
			v.rep.Holds.Voided++
		default:
			h.Status = HoldExpired
			v.rep.Holds.Pending--
			v.rep.Holds.Expired++
		}
	}
	return nil
}

// step records one step of a transfer (a capture to another account is its debit).
func (v *verifier) step(e Event, d TransferData) {
	f := v.flows[d.TransferID]
	if f == nil {
		f = &flow{id: d.TransferID, from: d.From, to: d.To, currency: d.Currency, amount: d.Amount}
		v.flows[d.TransferID] = f
	}
	onto := d.From
	switch e.Type {
	case EventTransferCredited:
		f.credits++
		f.finishedAt = e.Time
		onto = d.To
	case EventTransferRefunded:
		f.refunded++
		f.finishedAt = e.Time
	default:
		f.debits++
		f.debitedAt = e.Time
	}
	if f.mismatch == "" && (d.From != f.from || d.To != f.to || d.Currency != f.currency || d.Amount != f.amount || e.Account != onto) {
		f.mismatch = fmt.Sprintf("%s (in %s's stream) says %s→%s %d %s, another step says %s→%s %d %s",
			e.ID, e.Account, d.From, d.To, d.Amount, d.Currency, f.from, f.to, f.amount, f.currency)
	}
}

// pendingHolds compares the snapshot's pending holds with their records and the expiry
// index, read in one transaction with the snapshot's version. It returns false when the
// version moved since snap was read (the caller reads again), unless last is set: then it
// reports the account as busy and does not compare.
func (v *verifier) pendingHolds(ctx context.Context, snap *Account, last bool) (bool, error) {
	if snap.holds.len() == 0 {
		return true, nil
	}
	ks := v.l.store.keys
	p := ks.partition(snap.ID)
	ids := snap.holds.ids()
	tx := v.l.store.rdb.TxPipeline()
	version := tx.HGet(ctx, ks.snapshot(p, snap.ID), fieldVersion)
	recs := make([]*redis.MapStringStringCmd, len(ids))
	scores := make([]*redis.FloatCmd, len(ids))
	for i, h := range ids {
		recs[i] = tx.HGetAll(ctx, ks.hold(p, snap.ID, h))
		scores[i] = tx.ZScore(ctx, ks.holdExpiry(p), snap.ID+":"+h)
	}
	if _, err := tx.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return false, storeErr(ctx, err)
	}
	if version.Val() != strconv.FormatInt(snap.Version, 10) {
		if last {
			v.warning(Problem{Kind: ProblemAccountBusy, Account: snap.ID, Partition: &p,
				Detail: fmt.Sprintf("the version moved during each of %d reads; its pending holds were not compared with their records", v.opts.Attempts)})
			return true, nil
		}
		return false, nil
	}
	for i, id := range ids {
		ph, _ := snap.holds.get(id)
		bad := func(format string, args ...any) {
			v.problem(Problem{Kind: ProblemHoldRecord, Account: snap.ID, Partition: &p, Hold: id, Detail: fmt.Sprintf(format, args...)})
		}
		if v.now.Sub(ph.ExpiresAt) > v.opts.StuckAfter {
			v.warning(Problem{Kind: ProblemHoldNotSwept, Account: snap.ID, Partition: &p, Hold: id,
				Detail: fmt.Sprintf("expired at %s and still pending: is a sweeper (tally serve) running?", ph.ExpiresAt.Format(time.RFC3339))})
		}
		if len(recs[i].Val()) == 0 {
			bad("pending in the snapshot, but its record is missing")
			continue
		}
		h, err := parseHold(recs[i].Val())
		switch {
		case err != nil:
			bad("%v", err)
		case h.Status != HoldPending:
			bad("pending in the snapshot, but its record says %s", h.Status)
		case h.Currency != ph.Currency || h.Amount != ph.Amount || !h.ExpiresAt.Equal(ph.ExpiresAt):
			bad("the snapshot holds %d %s until %s, the record %d %s until %s", ph.Amount, ph.Currency, ph.ExpiresAt.Format(time.RFC3339Nano),
				h.Amount, h.Currency, h.ExpiresAt.Format(time.RFC3339Nano))
		}
		if score, err := scores[i].Result(); err != nil {
			bad("pending, but not in the expiry index: no sweeper will record its expiry")
		} else if int64(score) != ph.ExpiresAt.UnixMilli() {
			bad("the expiry index says %d, the hold expires at %d (Unix ms)", int64(score), ph.ExpiresAt.UnixMilli())
		}
	}
	return true, nil
}

// resolvedHolds compares the records of the account's captured, voided and expired holds
// with its events. A resolved hold's record never changes again, so no race is possible.
func (v *verifier) resolvedHolds(ctx context.Context, account string, holds map[string]*Hold) error {
	ks := v.l.store.keys
	p := ks.partition(account)
	var ids []string
	for _, id := range slices.Sorted(maps.Keys(holds)) {
		if holds[id].Status != HoldPending {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	pipe := v.l.store.rdb.Pipeline()
	recs := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		recs[i] = pipe.HGetAll(ctx, ks.hold(p, account, id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return storeErr(ctx, err)
	}
	for i, id := range ids {
		want := holds[id]
		bad := func(format string, args ...any) {
			v.problem(Problem{Kind: ProblemHoldRecord, Account: account, Partition: &p, Hold: id, Detail: fmt.Sprintf(format, args...)})
		}
		if len(recs[i].Val()) == 0 {
			bad("the events say %s, but its record is missing", want.Status)
			continue
		}
		h, err := parseHold(recs[i].Val())
		switch {
		case err != nil:
			bad("%v", err)
		case h.Status != want.Status || h.Captured != want.Captured || h.Amount != want.Amount || h.Currency != want.Currency || h.To != want.To:
			bad("the events say %s (amount %d %s, captured %d, to %q), the record %s (amount %d %s, captured %d, to %q)",
				want.Status, want.Amount, want.Currency, want.Captured, want.To, h.Status, h.Amount, h.Currency, h.Captured, h.To)
		}
	}
	return nil
}

// closeCut makes the traced events one consistent cut. Accounts are read one after
// another, so a destination read late may show a credit whose debit the source, read
// earlier, did not have yet. For each such transfer the source's stream is read on from
// its verified version up to the debit, tracing every event on the way (which may find
// more such credits, so it repeats until none is left). A credit or refund whose debit is
// in no stream at all is reported.
func (v *verifier) closeCut(ctx context.Context) error {
	for changed := true; changed; {
		changed = false
		for _, id := range slices.Sorted(maps.Keys(v.flows)) {
			f := v.flows[id]
			if f.debits > 0 || f.searched {
				continue
			}
			f.searched = true
			c := v.cuts[f.from]
			if c == nil { // opened after the scan: trace it from its first event
				c = &cut{acc: &Account{ID: f.from, Balances: map[string]Balance{}}}
			}
			next := c.acc.clone()
			found := false
			holds := map[string]*Hold{}
			err := v.events(ctx, f.from, next.Version, -1, func(e Event) (bool, error) {
				if err := next.apply(e); err != nil {
					return false, err
				}
				if err := v.trace(e, holds); err != nil {
					return false, err
				}
				found = f.debits > 0
				return found, nil
			})
			var bad *badEventError
			if err != nil && !errors.As(err, &bad) {
				return err
			}
			// The events read were traced, so the cut moves on to them whether or not the
			// debit was there (transfers reports it missing).
			if v.cuts[f.from] == nil && next.exists() {
				v.rep.Accounts++
			}
			v.rep.Events += next.Version - c.acc.Version
			c.acc = next
			v.cuts[f.from] = c
			changed = changed || found
		}
	}
	return nil
}

// transferRecordBatch bounds the transfer records one round trip reads: Verify keeps the
// steps of every transfer, but never more than this many records at once.
const transferRecordBatch = 500

// transfers checks every transfer's steps and lists those in flight, then compares the
// record of each transfer whose steps add up with them (transferRecord), in batches.
func (v *verifier) transfers(ctx context.Context) error {
	var sound []*flow // one debit, at most one credit or refund
	for _, id := range slices.Sorted(maps.Keys(v.flows)) {
		f := v.flows[id]
		v.rep.Transfers++
		switch {
		case f.mismatch != "":
			v.transferProblem(ProblemTransferFlow, f, "steps disagree: %s", f.mismatch)
		case f.debits == 0:
			v.transferProblem(ProblemTransferFlow, f, "%s credited %d and refunded %d times, but no debit of %s was found in its stream", f.to, f.credits, f.refunded, f.from)
		case f.debits > 1:
			v.transferProblem(ProblemTransferFlow, f, "debited %d times from %s", f.debits, f.from)
		case f.credits+f.refunded > 1:
			v.transferProblem(ProblemTransferFlow, f, "credited %d and refunded %d times", f.credits, f.refunded)
		default:
			sound = append(sound, f)
			if f.credits+f.refunded == 0 {
				v.rep.Pending++
				v.rep.InFlight.add(f.currency, f.amount)
				v.rep.InFlightTransfers = append(v.rep.InFlightTransfers, InFlightTransfer{ID: id, From: f.from, To: f.to,
					Currency: f.currency, Amount: f.amount, DebitedAt: f.debitedAt})
			}
		}
	}
	for batch := range slices.Chunk(sound, transferRecordBatch) {
		recs, indexed, err := v.transferRecords(ctx, batch)
		if err != nil {
			return err
		}
		for i, f := range batch {
			if err := v.transferRecord(ctx, f, recs[i], indexed[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// transferProblem reports a violation of kind about transfer f, placed at its source.
func (v *verifier) transferProblem(kind string, f *flow, format string, args ...any) {
	v.problem(Problem{Kind: kind, Transfer: f.id, Account: f.from, Partition: v.partition(f.from), Currency: f.currency,
		Detail: fmt.Sprintf(format, args...)})
}

// transferRecords reads the records of fs and whether each is in its partition's pending
// index, in one round trip. The saga's scripts change a record's status and its index
// entry together, but they are read one after the other (one MULTI cannot span the
// partitions of a Cluster), so a record read pending may finish before its index entry is
// read. Those read pending outside the index are read once more: a transfer finishes once,
// so a second read that finds the same again is not such a race.
func (v *verifier) transferRecords(ctx context.Context, fs []*flow) ([]map[string]string, []bool, error) {
	ks := v.l.store.keys
	recs := make([]map[string]string, len(fs))
	indexed := make([]bool, len(fs))
	read := func(which []int) error {
		pipe := v.l.store.rdb.Pipeline()
		hs := make([]*redis.MapStringStringCmd, len(which))
		zs := make([]*redis.FloatCmd, len(which))
		for j, i := range which {
			p := ks.partition(fs[i].from)
			hs[j] = pipe.HGetAll(ctx, ks.transfer(p, fs[i].id)) // the record first: see above
			zs[j] = pipe.ZScore(ctx, ks.transfersPending(p), fs[i].id)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return storeErr(ctx, err)
		}
		for j, i := range which {
			recs[i], indexed[i] = hs[j].Val(), zs[j].Err() == nil
		}
		return nil
	}
	all := make([]int, len(fs))
	for i := range all {
		all[i] = i
	}
	if err := read(all); err != nil {
		return nil, nil, err
	}
	var again []int
	for i := range fs {
		if recs[i]["status"] == TransferPending && !indexed[i] {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		if err := read(again); err != nil {
			return nil, nil, err
		}
	}
	return recs, indexed, nil
}

// transferRecord compares the record of a transfer whose steps add up (rec, and whether it
// is in the pending index) with the steps, since GET /v1/transfers/{id} answers from it: the
// same ID, accounts, amount, currency and hold; the status the steps give (credited:
// completed, refunded: refunded, neither: pending) with a completion time once finished;
// in the pending index exactly while pending. A transfer in flight in the cut whose record
// says it finished must have the finishing step in the stream after the cut (transfer_flow
// when not: the step was lost); every other disagreement is a transfer_record violation.
//
// One disagreement is a race for a while: on Redis Cluster the credit commits in the
// destination's partition and a separate step then completes the record in the source's
// (on one Redis the credit's script does both), so a credited transfer's record is pending,
// in the index, for a moment — longer when the process died in between and the sweep has
// not completed it yet. That is not reported until StuckAfter has passed since the credit;
// then it is a violation, not a transfer_stuck warning: the money has arrived and clients
// are still told it has not (and on one Redis the sweep trusts the credit's record and will
// never complete it).
func (v *verifier) transferRecord(ctx context.Context, f *flow, rec map[string]string, indexed bool) error {
	done := TransferPending
	switch {
	case f.credits > 0:
		done = TransferCompleted
	case f.refunded > 0:
		done = TransferRefunded
	}
	bad := func(format string, args ...any) { v.transferProblem(ProblemTransferRecord, f, format, args...) }
	if rec["id"] == "" { // no record, or only a refusal recorded under the ID: not a transfer
		if done == TransferPending {
			v.transferProblem(ProblemTransferFlow, f, "debited from %s, but its transfer record is missing: nothing will finish it", f.from)
		} else {
			bad("%s, but its transfer record is missing: GET /v1/transfers/%s does not find it", done, f.id)
		}
		return nil
	}
	t, err := parseTransfer(f.id, rec)
	if err != nil {
		bad("%v", err)
		return nil
	}
	f.metadata = t.Metadata // for the metadata index check
	if t.ID != f.id {
		bad("its record names transfer %q", t.ID)
	}
	if t.From != f.from || t.To != f.to || t.Currency != f.currency || t.Amount != f.amount || t.HoldID != f.hold {
		bad("the steps say %s→%s %d %s (hold %q), the record %s→%s %d %s (hold %q)",
			f.from, f.to, f.amount, f.currency, f.hold, t.From, t.To, t.Amount, t.Currency, t.HoldID)
	}
	switch t.Status {
	case TransferPending:
		if !indexed {
			// The record and the index change in one script: a pending record outside the
			// index is never swept.
			if done == TransferPending {
				v.transferProblem(ProblemTransferFlow, f, "pending, but not in the pending-transfers index: the sweep will not finish it")
			} else {
				bad("%s, but its record says pending, outside the pending-transfers index: nothing will finish it", done)
			}
			return nil // reported: the status compared below says the same again
		}
	case TransferCompleted, TransferRefunded:
		if indexed {
			bad("its record says %s, but it is still in the pending-transfers index: the sweep picks it up every round", t.Status)
		}
		if t.CompletedAt == nil {
			bad("its record says %s, but has no completed_at", t.Status)
		}
	default:
		bad("its record has status %q, which no transfer has", t.Status)
		return nil
	}
	switch {
	case t.Status == done:
		if done == TransferPending {
			if age := v.now.Sub(f.debitedAt); age > v.opts.StuckAfter {
				v.warning(Problem{Kind: ProblemTransferStuck, Transfer: f.id, Account: f.from, Partition: v.partition(f.from), Currency: f.currency,
					Detail: fmt.Sprintf("%d %s from %s to %s in flight for %s: are the relay and the sweeper (tally serve) running?",
						f.amount, f.currency, f.from, f.to, age.Round(time.Second))})
			}
		}
	case done == TransferPending:
		return v.finishedAfterCut(ctx, f, t.Status)
	case done == TransferCompleted && t.Status == TransferPending:
		if age := v.now.Sub(f.finishedAt); age > v.opts.StuckAfter { // in the index: a record outside it returned above
			bad("credited to %s %s ago, but its record still says pending: the step that completes it was lost", f.to, age.Round(time.Second))
		}
	default:
		bad("the steps say %s, its record says %s", done, t.Status)
	}
	return nil
}

// finishedAfterCut checks a transfer in flight in the cut whose record says status
// (completed or refunded): the step that finished it must be in the stream after the cut.
func (v *verifier) finishedAfterCut(ctx context.Context, f *flow, status string) error {
	account, typ := f.to, EventTransferCredited
	if status == TransferRefunded {
		account, typ = f.from, EventTransferRefunded
	}
	after := int64(0)
	if c := v.cuts[account]; c != nil {
		after = c.acc.Version
	}
	found := false
	err := v.events(ctx, account, after, -1, func(e Event) (bool, error) {
		if e.Type == typ {
			var d TransferData
			if err := decodeData(e, &d); err == nil && d.TransferID == f.id {
				found = true
			}
		}
		return found, nil
	})
	var bad *badEventError
	if err != nil && !errors.As(err, &bad) {
		return err
	}
	if !found {
		v.transferProblem(ProblemTransferFlow, f, "the transfer record says %s, but %s's stream has no %s for it: the step was lost", status, account, typ)
	}
	return nil
}

// conservation checks, per currency, Totals + InFlight = Deposits − Withdrawals − CapturedOut
// over the cut.
func (v *verifier) conservation() {
	for _, c := range v.cuts {
		for cur, b := range c.acc.Balances {
			v.rep.Totals.add(cur, b.Posted)
		}
	}
	currencies := map[string]bool{}
	for _, m := range []Sums{v.rep.Totals, v.rep.InFlight, v.rep.Deposits, v.rep.Withdrawals, v.rep.CapturedOut} {
		for c := range m {
			currencies[c] = true
		}
	}
	for _, c := range slices.Sorted(maps.Keys(currencies)) {
		held := new(big.Int).Add(v.rep.Totals.Get(c), v.rep.InFlight.Get(c))
		flowed := new(big.Int).Sub(v.rep.Deposits.Get(c), v.rep.Withdrawals.Get(c))
		flowed.Sub(flowed, v.rep.CapturedOut.Get(c))
		if held.Cmp(flowed) != 0 {
			v.problem(Problem{Kind: ProblemNotConserved, Currency: c,
				Detail: fmt.Sprintf("money not conserved: posted %s + in flight %s != deposits − withdrawals − captured out = %s",
					v.rep.Totals.Get(c), v.rep.InFlight.Get(c), flowed)})
		}
	}
}

// outbox reports each partition's delivery progress and checks that the newest outbox
// entries and the consumers' watermarks name no version an account does not have.
func (v *verifier) outbox(ctx context.Context) error {
	rdb, prefix := v.l.store.rdb, v.l.cfg.Prefix
	admin, err := outbox.NewAdmin(rdb, outbox.AdminConfig{Prefix: prefix, Partitions: v.l.cfg.Partitions, Group: v.opts.Group, Clock: v.l.cfg.Clock})
	if err != nil {
		return err
	}
	sts, err := admin.Status(ctx)
	if err != nil {
		return storeErr(ctx, err)
	}
	v.rep.Outbox = make([]OutboxProgress, len(sts))
	for i, st := range sts {
		p := st.Partition
		op := OutboxProgress{PartitionStatus: st}
		if st.Pending > 0 {
			n, oldest, err := admin.IdlePending(ctx, p, v.opts.MaxLag)
			if err != nil {
				return storeErr(ctx, err)
			}
			op.IdlePending = n
			if n > 0 {
				v.warning(Problem{Kind: ProblemOutboxIdle, Partition: &p,
					Detail: fmt.Sprintf("%d entries pending in group %q without a delivery attempt for %s (oldest %s): is the owner %q alive?", n, v.opts.Group, v.opts.MaxLag, oldest, st.Owner)})
			}
		}
		if age := time.Duration(st.OldestAgeSeconds * float64(time.Second)); st.Backlog > 0 && age > v.opts.MaxLag {
			v.warning(Problem{Kind: ProblemOutboxLag, Partition: &p,
				Detail: fmt.Sprintf("%d entries not acknowledged by group %q, the oldest %s old: is a relay running, is a sink failing?", st.Backlog, v.opts.Group, age.Round(time.Second))})
		}
		if st.DeadLetters > 0 {
			v.warning(Problem{Kind: ProblemDeadLetters, Partition: &p,
				Detail: fmt.Sprintf("%d dead letters: inspect them and replay (POST /v1/relay/dead-letters/replay)", st.DeadLetters)})
		}
		v.rep.Outbox[i] = op
	}

	// The highest version of each account that something downstream has seen.
	type seen struct {
		version int64
		by      string
	}
	highest := map[string]seen{}
	note := func(account string, version int64, by string) {
		if version > highest[account].version {
			highest[account] = seen{version, by}
		}
	}
	if v.opts.OutboxSample > 0 {
		pipe := rdb.Pipeline()
		cmds := make([]*redis.XMessageSliceCmd, v.l.cfg.Partitions)
		for p := range cmds {
			cmds[p] = pipe.XRevRangeN(ctx, outbox.StreamKey(prefix, p), "+", "-", v.opts.OutboxSample)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return storeErr(ctx, err)
		}
		for p, cmd := range cmds {
			for _, x := range cmd.Val() {
				m, err := outbox.DecodeEntry(x.Values)
				if err != nil {
					continue // the relay dead-letters it; nothing to compare
				}
				note(m.Key, m.Seq, fmt.Sprintf("outbox entry %s of partition %d", x.ID, p))
			}
		}
	}
	for _, name := range v.opts.Consumers {
		d, err := outbox.NewDedup(rdb, outbox.DedupConfig{Prefix: prefix, Name: name})
		if err != nil {
			return err
		}
		for p := 0; p < v.l.cfg.Partitions; p++ {
			wms, err := d.Watermarks(ctx, p)
			if err != nil {
				return storeErr(ctx, err)
			}
			for account, seq := range wms {
				note(account, seq, fmt.Sprintf("consumer %q", name))
			}
		}
	}
	if len(highest) == 0 {
		return nil
	}
	// The accounts' versions now, read after what saw them: a version only grows, so one
	// below what was seen means events were lost.
	accounts := slices.Sorted(maps.Keys(highest))
	ks := v.l.store.keys
	pipe := rdb.Pipeline()
	versions := make([]*redis.StringCmd, len(accounts))
	for i, a := range accounts {
		versions[i] = pipe.HGet(ctx, ks.snapshot(ks.partition(a), a), fieldVersion)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return storeErr(ctx, err)
	}
	for i, a := range accounts {
		have, _ := strconv.ParseInt(versions[i].Val(), 10, 64)
		if s := highest[a]; s.version > have {
			v.problem(Problem{Kind: ProblemLostEvents, Account: a, Partition: v.partition(a),
				Detail: fmt.Sprintf("%s has version %d, the account only %d: events were lost after they were published", s.by, s.version, have)})
		}
	}
	return nil
}

// idMillis returns the millisecond (first) part of a stream ID.
func idMillis(id string) (int64, bool) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	return n, err == nil
}
