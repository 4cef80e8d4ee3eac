package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"sort"
	"testing"
	"time"
)

// FuzzDecide drives the decide functions — the whole of the ledger's money rules — with
// random programs of commands over a few accounts and checks every step against modelLedger,
// a plain in-memory model written from the documented rules, not from the code:
//
//   - each command succeeds or fails with the same error as the model;
//   - after every batch, each account's posted, held and available balances equal the model's;
//   - a rejected command leaves no trace (its batch's other commands still apply);
//   - the snapshot encoding round-trips (snapshotFields → parseSnapshot), as Redis stores it,
//     and a commit that writes only the fields it changes leaves the hash a full write would;
//   - replaying an account's events (through JSON, as they are stored) yields its snapshot.
//
// Commands of one batch decide one after another on one decision, each on a fork merged only
// when it succeeds, as the writer does. No Redis is involved: this is the pure part of a
// write. The seed corpus is in testdata/fuzz/FuzzDecide; CI fuzzes briefly (make fuzz).
func FuzzDecide(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x01\x00\x00\x05\x02\x00\x00\x06"))
	f.Add([]byte("\x00\x00\x01\x00\x01\x00\x00\x01\x00\x00\x30\x39\x07\x00\x01\x00\x20\x0c\x03\x00\x00\x00\x10\x02\x04\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, program []byte) {
		runProgram(t, program)
	})
}

// accounts of the programs: two share the placement tag "g" (atomic transfers between them),
// the third lives in another partition (transfers to and from it are sagas).
var fuzzKeys = keyspace{prefix: "fz", partitions: 16}

func fuzzAccounts() []string {
	ids := []string{"g..a", "g..b"}
	for _, c := range "xyzuvw" {
		if id := string(c); fuzzKeys.partition(id) != fuzzKeys.partition("g..a") {
			return append(ids, id)
		}
	}
	panic("no account outside the partition of g..a")
}

var fuzzCurrencies = []string{"USD", "EUR"}

// program reads a fuzz input as a stream of small numbers; past the end it reads zeros.
type program struct{ b []byte }

func (p *program) byte() byte {
	if len(p.b) == 0 {
		return 0
	}
	v := p.b[0]
	p.b = p.b[1:]
	return v
}

func (p *program) pick(n int) int { return int(p.byte()) % n }

// amount returns a small amount most of the time, and sometimes one near the int64 limits,
// zero or negative, so that overflow and validation are reached.
func (p *program) amount() int64 {
	hi, lo := int64(p.byte()), int64(p.byte())
	switch hi % 16 {
	case 0:
		return math.MaxInt64 - lo
	case 1:
		return -lo
	case 2:
		return 1 << 62
	default:
		return (hi%16)*256 + lo
	}
}

func runProgram(t *testing.T, input []byte) {
	ids := fuzzAccounts()
	p := &program{b: input}
	m := newModel(ids)
	now := time.UnixMilli(1_700_000_000_000).UTC()
	hashes := map[string]map[string]string{} // per account, its snapshot hash as Redis holds it
	streams := map[string][]Event{}          // per account, every event as stored (JSON)
	transfers := 0

	for steps := 0; len(p.b) > 0 && steps < 400; {
		// A batch: read every account as the store reads it at now, then up to 8 commands.
		before := map[string]snapshot{}
		work := map[string]*Account{}
		for _, id := range ids {
			before[id] = readHash(t, id, hashes[id], now)
			work[id] = before[id].acc.clone()
		}
		d := newDecision(fuzzKeys, now, time.Hour, work)
		d.placed = m.placedKeys() // as the write path probes them
		for n := 1 + p.pick(8); n > 0 && len(p.b) > 0; n-- {
			steps++
			op := p.pick(10)
			if op == 9 { // the clock moves; a batch has one now
				now = now.Add(time.Duration(p.byte()) * 25 * time.Millisecond)
				break
			}
			cmd, want, desc := fuzzCommand(p, op, ids, m, now, &transfers)
			if cmd == nil {
				continue
			}
			f := d.fork(cmd.accounts())
			body, err := cmd.decide(f)
			if got := errClass(err); got != want.err {
				t.Fatalf("step %d %s: error %v (class %q), model says %q", steps, desc, err, got, want.err)
			}
			if err != nil {
				continue
			}
			if want.check != nil {
				want.check(t, body)
			}
			d.merge(f)
			want.apply()
		}
		for id, evs := range d.events {
			if len(evs) > 0 {
				hashes[id] = commitHash(t, hashes[id], before[id], d.accs[id])
			}
			for _, e := range evs {
				raw, err := json.Marshal(e)
				if err != nil {
					t.Fatal(err)
				}
				var back Event
				if err := json.Unmarshal(raw, &back); err != nil {
					t.Fatal(err)
				}
				streams[id] = append(streams[id], back)
			}
		}
		for _, id := range ids {
			a := readHash(t, id, hashes[id], now).acc
			m.compare(t, a, now)
			r := &Account{ID: id, Balances: map[string]Balance{}}
			for _, e := range streams[id] {
				if err := r.apply(e); err != nil {
					t.Fatalf("replay of %s: %v", id, err)
				}
			}
			r.settle(now)
			if got, want := fieldsOf(t, r), fieldsOf(t, a); got != want {
				t.Fatalf("replay of %s = %s, snapshot %s", id, got, want)
			}
		}
	}
}

// readHash returns account id's snapshot as a read parses its hash h at now.
func readHash(t *testing.T, id string, h map[string]string, now time.Time) snapshot {
	if len(h) == 0 {
		return snapshot{acc: &Account{ID: id, Balances: map[string]Balance{}}}
	}
	s, err := newSnapshot(id, h, now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// commitHash returns the hash h after a commit of after decided on before, as the commit
// script writes it (snapshotWrite's fields set, the fields after lacks deleted), and checks
// that it holds every field of after's snapshot with its value and nothing else: writing
// only what changed must leave the hash a full write would.
func commitHash(t *testing.T, h map[string]string, before snapshot, after *Account) map[string]string {
	write, del, _, err := snapshotWrite(after, before)
	if err != nil {
		t.Fatal(err)
	}
	out := maps.Clone(h)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, hashOf(write))
	for _, f := range del {
		delete(out, fmt.Sprint(f))
	}
	full, err := snapshotFields(after)
	if err != nil {
		t.Fatal(err)
	}
	want := hashOf(full)
	if !maps.Equal(out, want) {
		t.Fatalf("a commit of %s over %v writes %v and leaves %v; its snapshot is %v", after.ID, h, write, out, want)
	}
	return out
}

// hashOf returns the hash fields (name, value, ...) as a map, the way Redis stores them.
func hashOf(fields []any) map[string]string {
	h := make(map[string]string, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		h[fmt.Sprint(fields[i])] = fmt.Sprint(fields[i+1])
	}
	return h
}

func fieldsOf(t *testing.T, a *Account) string {
	if !a.exists() {
		return "absent"
	}
	fields, err := snapshotFields(a)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(fields)
}

// errClass names the sentinel an error wraps ("" for nil).
func errClass(err error) string {
	if err == nil {
		return ""
	}
	for _, s := range []error{ErrInvalid, ErrAccountNotFound, ErrAccountExists, ErrInsufficientFunds, ErrOverflow,
		ErrIdempotencyKeyReused, ErrAccountClosed, ErrAccountNotEmpty, ErrHoldNotPending, ErrAmountExceedsHold,
		ErrNotFound, errNothingToDo, errNotDue} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "unexpected: " + err.Error()
}

// expectation is what the model predicts for one command: its error class, what to check in
// its response, and how the model changes when it succeeds.
type expectation struct {
	err   string
	check func(t *testing.T, body any)
	apply func()
}

func fail(err error) expectation { return expectation{err: err.Error(), apply: func() {}} }

func ok(apply func()) expectation { return expectation{apply: apply} }

// fuzzCommand reads one command of kind op and returns it with the model's expectation; a
// nil command when the input is refused before deciding (Validate), after checking that the
// model refuses it too.
func fuzzCommand(p *program, op int, ids []string, m *modelLedger, now time.Time, transfers *int) (command, expectation, string) {
	acct := ids[p.pick(len(ids))]
	cur := fuzzCurrencies[p.pick(len(fuzzCurrencies))]
	hold := fmt.Sprintf("h%d", p.pick(3))
	switch op {
	case 0:
		c := OpenAccount{ID: acct, AllowNegative: p.pick(4) == 0}
		return c, m.open(c), fmt.Sprintf("%+v", c)
	case 1, 2:
		amount := p.amount()
		if validateAmount(amount) != nil {
			return nil, expectation{}, ""
		}
		if op == 1 {
			c := Deposit{Account: acct, Currency: cur, Amount: amount}
			return c, m.move(acct, cur, amount, false, now), fmt.Sprintf("%+v", c)
		}
		c := Withdraw{Account: acct, Currency: cur, Amount: amount}
		return c, m.move(acct, cur, -amount, true, now), fmt.Sprintf("%+v", c)
	case 3:
		c := PlaceHold{Account: acct, ID: hold, Currency: cur, Amount: p.amount(), Timeout: time.Duration(1+p.pick(3)) * time.Second}
		if c.Validate() != nil {
			return nil, expectation{}, ""
		}
		return c, m.placeHold(c, now), fmt.Sprintf("%+v", c)
	case 4:
		c := CaptureHold{Account: acct, HoldID: hold, Amount: int64(p.pick(4)) * 64}
		if to := ids[p.pick(len(ids))]; to != acct && p.pick(2) == 0 {
			*transfers++
			c.To, c.TransferID = to, fmt.Sprintf("t%d", *transfers)
			c.sameTo = fuzzKeys.partition(to) == fuzzKeys.partition(acct)
		}
		return c, m.capture(c, now), fmt.Sprintf("%+v", c)
	case 5:
		c := VoidHold{Account: acct, HoldID: hold}
		return c, m.void(c, now), fmt.Sprintf("%+v", c)
	case 6:
		c := expireHoldCmd{Account: acct, HoldID: hold}
		return c, m.expire(c, now), fmt.Sprintf("%+v", c)
	case 7:
		to := ids[p.pick(len(ids))]
		amount := p.amount()
		*transfers++
		req := TransferRequest{ID: fmt.Sprintf("t%d", *transfers), From: acct, To: to, Currency: cur, Amount: amount}
		if req.Validate() != nil {
			return nil, expectation{}, ""
		}
		c := transferCmd{T: Transfer{ID: req.ID, From: acct, To: to, Currency: cur, Amount: amount},
			SameTo: fuzzKeys.partition(to) == fuzzKeys.partition(acct)}
		return c, m.transfer(c, now), fmt.Sprintf("%+v", c)
	case 8:
		if t, ok := m.nextInFlight(p.pick(4)); ok {
			if m.refusing(t) {
				c := transferRefund{T: t, Reason: "refused"}
				return c, m.refund(t), fmt.Sprintf("refund %+v", t)
			}
			return transferCredit{T: t}, m.credit(t), fmt.Sprintf("credit %+v", t)
		}
		c := CloseAccount{Account: acct}
		return c, m.close(acct, now), fmt.Sprintf("%+v", c)
	}
	panic("unknown op")
}

// modelLedger is the reference: balances as big integers (so the model sees an overflow the
// implementation must refuse), holds with their expiry, and transfers in flight.
type modelLedger struct {
	accts    map[string]*modelAcct
	inFlight []Transfer // debited, neither credited nor refunded
}

type modelAcct struct {
	exists, closed, negative bool
	posted                   map[string]*big.Int
	holds                    map[string]modelHold // placed, not captured, voided or swept
	placed                   map[string]bool      // every hold ever placed
}

type modelHold struct {
	currency string
	amount   int64
	expires  time.Time
}

func newModel(ids []string) *modelLedger {
	m := &modelLedger{accts: map[string]*modelAcct{}}
	for _, id := range ids {
		m.accts[id] = &modelAcct{posted: map[string]*big.Int{}, holds: map[string]modelHold{}, placed: map[string]bool{}}
	}
	return m
}

func (a *modelAcct) balance(cur string) *big.Int {
	if a.posted[cur] == nil {
		a.posted[cur] = new(big.Int)
	}
	return a.posted[cur]
}

// held is the sum of a's holds in cur that count at now (not expired).
func (a *modelAcct) held(cur string, now time.Time) int64 {
	var n int64
	for _, h := range a.holds {
		if h.currency == cur && now.Before(h.expires) {
			n += h.amount
		}
	}
	return n
}

// fits reports whether x+delta stays in int64.
func fits(x *big.Int, delta int64) bool {
	return new(big.Int).Add(x, big.NewInt(delta)).IsInt64()
}

func (m *modelLedger) openErr(id string) error {
	a := m.accts[id]
	switch {
	case !a.exists:
		return ErrAccountNotFound
	case a.closed:
		return ErrAccountClosed
	}
	return nil
}

func (m *modelLedger) canSpend(id, cur string, amount int64, now time.Time) bool {
	a := m.accts[id]
	avail := new(big.Int).Sub(a.balance(cur), big.NewInt(a.held(cur, now)))
	return a.negative || avail.Cmp(big.NewInt(amount)) >= 0
}

func (m *modelLedger) open(c OpenAccount) expectation {
	a := m.accts[c.ID]
	if a.exists {
		return fail(ErrAccountExists)
	}
	return ok(func() { a.exists, a.negative = true, c.AllowNegative })
}

// move is a deposit (delta > 0) or a withdrawal (delta < 0, spend true).
func (m *modelLedger) move(id, cur string, delta int64, spend bool, now time.Time) expectation {
	if err := m.openErr(id); err != nil {
		return fail(err)
	}
	a := m.accts[id]
	if spend && !m.canSpend(id, cur, -delta, now) {
		return fail(ErrInsufficientFunds)
	}
	if !fits(a.balance(cur), delta) {
		return fail(ErrOverflow)
	}
	return ok(func() { a.balance(cur).Add(a.balance(cur), big.NewInt(delta)) })
}

func (m *modelLedger) placeHold(c PlaceHold, now time.Time) expectation {
	if err := m.openErr(c.Account); err != nil {
		return fail(err)
	}
	a := m.accts[c.Account]
	if _, dup := a.holds[c.ID]; dup {
		return fail(ErrIdempotencyKeyReused)
	}
	if !m.canSpend(c.Account, c.Currency, c.Amount, now) {
		return fail(ErrInsufficientFunds)
	}
	expires := time.UnixMilli(now.Add(c.Timeout).UnixMilli()).UTC()
	return ok(func() {
		a.balance(c.Currency) // a hold opens the currency's balance
		a.holds[c.ID] = modelHold{currency: c.Currency, amount: c.Amount, expires: expires}
		a.placed[c.ID] = true
	})
}

// placedKeys returns the record keys of every hold ever placed.
func (m *modelLedger) placedKeys() map[string]bool {
	out := map[string]bool{}
	for id, a := range m.accts {
		for h := range a.placed {
			out[holdKey(fuzzKeys, id, h)] = true
		}
	}
	return out
}

// live returns the hold if it is pending and has not expired at now.
func (m *modelLedger) live(id, hold string, now time.Time) (modelHold, bool) {
	h, ok := m.accts[id].holds[hold]
	return h, ok && now.Before(h.expires)
}

// notPending is the refusal of a capture or void of a hold that is not pending.
func (m *modelLedger) notPending(account, hold string) expectation {
	if !m.accts[account].placed[hold] {
		return fail(ErrNotFound)
	}
	return fail(ErrHoldNotPending)
}

func (m *modelLedger) capture(c CaptureHold, now time.Time) expectation {
	a := m.accts[c.Account]
	h, live := m.live(c.Account, c.HoldID, now)
	if !live {
		return m.notPending(c.Account, c.HoldID)
	}
	amount := c.Amount
	if amount == 0 {
		amount = h.amount
	}
	if amount > h.amount {
		return fail(ErrAmountExceedsHold)
	}
	if c.sameTo {
		if err := m.openErr(c.To); err != nil {
			return fail(err)
		}
	}
	if !fits(a.balance(h.currency), -amount) {
		return fail(ErrOverflow)
	}
	var to *modelAcct
	if c.sameTo {
		to = m.accts[c.To]
		if !fits(to.balance(h.currency), amount) {
			return fail(ErrOverflow)
		}
	}
	e := ok(func() {
		delete(a.holds, c.HoldID)
		a.balance(h.currency).Sub(a.balance(h.currency), big.NewInt(amount))
		switch {
		case to != nil:
			to.balance(h.currency).Add(to.balance(h.currency), big.NewInt(amount))
		case c.To != "":
			m.inFlight = append(m.inFlight, Transfer{ID: c.TransferID, From: c.Account, To: c.To, Currency: h.currency, Amount: amount, HoldID: c.HoldID})
		}
	})
	e.check = func(t *testing.T, body any) {
		got := body.(Hold)
		if got.Status != HoldCaptured || got.Captured != amount || got.Amount != h.amount {
			t.Fatalf("capture answered %+v, want captured %d of %d", got, amount, h.amount)
		}
	}
	return e
}

func (m *modelLedger) void(c VoidHold, now time.Time) expectation {
	if _, live := m.live(c.Account, c.HoldID, now); !live {
		return m.notPending(c.Account, c.HoldID)
	}
	return ok(func() { delete(m.accts[c.Account].holds, c.HoldID) })
}

func (m *modelLedger) expire(c expireHoldCmd, now time.Time) expectation {
	h, ok := m.accts[c.Account].holds[c.HoldID]
	switch {
	case !ok:
		return fail(errNothingToDo)
	case now.Before(h.expires):
		return fail(errNotDue)
	}
	return expectation{apply: func() { delete(m.accts[c.Account].holds, c.HoldID) }}
}

func (m *modelLedger) transfer(c transferCmd, now time.Time) expectation {
	t := c.T
	if err := m.openErr(t.From); err != nil {
		return fail(err)
	}
	if c.SameTo {
		if err := m.openErr(t.To); err != nil {
			return fail(err)
		}
	}
	if !m.canSpend(t.From, t.Currency, t.Amount, now) {
		return fail(ErrInsufficientFunds)
	}
	from := m.accts[t.From]
	if !fits(from.balance(t.Currency), -t.Amount) {
		return fail(ErrOverflow)
	}
	var to *modelAcct
	if c.SameTo {
		to = m.accts[t.To]
		if !fits(to.balance(t.Currency), t.Amount) {
			return fail(ErrOverflow)
		}
	}
	e := ok(func() {
		from.balance(t.Currency).Sub(from.balance(t.Currency), big.NewInt(t.Amount))
		if to != nil {
			to.balance(t.Currency).Add(to.balance(t.Currency), big.NewInt(t.Amount))
		} else {
			m.inFlight = append(m.inFlight, t)
		}
	})
	e.check = func(tt *testing.T, body any) {
		want := TransferPending
		if c.SameTo {
			want = TransferCompleted
		}
		if got := body.(Transfer); got.Status != want || got.Amount != t.Amount {
			tt.Fatalf("transfer answered %+v, want status %s", got, want)
		}
	}
	return e
}

func (m *modelLedger) nextInFlight(i int) (Transfer, bool) {
	if len(m.inFlight) == 0 {
		return Transfer{}, false
	}
	return m.inFlight[i%len(m.inFlight)], true
}

// refusing reports whether the destination refuses t's credit: it does not exist, is
// closed, or would overflow.
func (m *modelLedger) refusing(t Transfer) bool {
	to := m.accts[t.To]
	return !to.exists || to.closed || !fits(to.balance(t.Currency), t.Amount)
}

func (m *modelLedger) land(t Transfer) {
	for i, f := range m.inFlight {
		if f.ID == t.ID {
			m.inFlight = append(m.inFlight[:i], m.inFlight[i+1:]...)
			return
		}
	}
}

func (m *modelLedger) credit(t Transfer) expectation {
	to := m.accts[t.To]
	e := ok(func() {
		to.balance(t.Currency).Add(to.balance(t.Currency), big.NewInt(t.Amount))
		m.land(t)
	})
	e.check = func(tt *testing.T, body any) {
		if got := body.(creditOutcome); !got.Credited {
			tt.Fatalf("credit of %s refused (%s); the model credits it", t.ID, got.Reason)
		}
	}
	return e
}

func (m *modelLedger) refund(t Transfer) expectation {
	from := m.accts[t.From]
	if !fits(from.balance(t.Currency), t.Amount) {
		// The source's balance grew so much since the debit that the refund overflows: the
		// transfer stays in flight (the ledger keeps refusing; verify reports it stuck).
		return fail(ErrOverflow)
	}
	return ok(func() {
		from.balance(t.Currency).Add(from.balance(t.Currency), big.NewInt(t.Amount))
		m.land(t)
	})
}

func (m *modelLedger) close(id string, now time.Time) expectation {
	if err := m.openErr(id); err != nil {
		return fail(err)
	}
	a := m.accts[id]
	for cur, n := range a.posted {
		if n.Sign() != 0 || a.held(cur, now) != 0 {
			return fail(ErrAccountNotEmpty)
		}
	}
	return ok(func() { a.closed, a.holds = true, map[string]modelHold{} })
}

// compare fails the test unless a's balances at now are the model's.
func (m *modelLedger) compare(t *testing.T, a *Account, now time.Time) {
	ma := m.accts[a.ID]
	if a.exists() != ma.exists || a.closed() != ma.closed {
		t.Fatalf("%s: exists %v closed %v, model %v %v", a.ID, a.exists(), a.closed(), ma.exists, ma.closed)
	}
	curs := map[string]bool{}
	for c := range a.Balances {
		curs[c] = true
	}
	for c := range ma.posted {
		curs[c] = true
	}
	names := make([]string, 0, len(curs))
	for c := range curs {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		b := a.Balances[c]
		posted := ma.balance(c)
		held := ma.held(c, now)
		if !posted.IsInt64() || b.Posted != posted.Int64() || b.Held != held || b.Available != b.Posted-held {
			t.Fatalf("%s %s: posted %d held %d available %d; model posted %s held %d", a.ID, c, b.Posted, b.Held, b.Available, posted, held)
		}
	}
	if a.holds.len() != len(ma.holds) {
		t.Fatalf("%s: %d pending holds, model %d", a.ID, a.holds.len(), len(ma.holds))
	}
}
