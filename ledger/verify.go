package ledger

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"sort"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// VerifyReport is the result of checking the ledger's invariants over every account.
// Money is conserved when, per currency, Totals + InFlight = Deposits − Withdrawals −
// CapturedOut.
type VerifyReport struct {
	Accounts    int                 `json:"accounts"`
	Events      int64               `json:"events"`
	Totals      map[string]*big.Int `json:"totals"`       // sum of posted balances (no overflow)
	InFlight    map[string]*big.Int `json:"in_flight"`    // debited, neither credited nor refunded yet
	Deposits    map[string]*big.Int `json:"deposits"`     // sum of Deposited
	Withdrawals map[string]*big.Int `json:"withdrawals"`  // sum of Withdrawn
	CapturedOut map[string]*big.Int `json:"captured_out"` // captures that left the ledger (no destination)
	Transfers   int                 `json:"transfers"`
	Pending     int                 `json:"pending_transfers"`
	Problems    []string            `json:"problems"`
}

// flow tracks one transfer across the streams of its accounts.
type flow struct {
	currency                  string
	amount                    int64
	debits, credits, refunded int
}

// OK reports whether no invariant was violated.
func (r VerifyReport) OK() bool { return len(r.Problems) == 0 }

// Verify scans every account (on every master of a Cluster), replays its event stream and
// checks that the replay equals the snapshot and that no account without allow_negative has
// a negative available balance. It returns an error only when Redis fails; violations are
// listed in the report.
func (l *Ledger) Verify(ctx context.Context) (VerifyReport, error) {
	rep := VerifyReport{Totals: map[string]*big.Int{}, InFlight: map[string]*big.Int{}, Deposits: map[string]*big.Int{},
		Withdrawals: map[string]*big.Int{}, CapturedOut: map[string]*big.Int{}}
	var (
		mu  sync.Mutex
		ids []string
	)
	pattern := l.cfg.Prefix + ":{*}:acct:*"
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			// After the partition tag: an account may be called "acct" too.
			id := k[strings.Index(k, "}:acct:")+len("}:acct:"):]
			if strings.Contains(id, ":") { // an account's other keys (its event stream)
				continue
			}
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		}
		return iter.Err()
	}
	if err := redisx.ForEachMaster(ctx, l.store.rdb, scan); err != nil { // masters concurrently
		return rep, storeErr(ctx, err)
	}
	sort.Strings(ids)
	now := l.cfg.Clock()
	flows := map[string]*flow{}
	sum := func(m map[string]*big.Int, c string, n int64) {
		if m[c] == nil {
			m[c] = new(big.Int)
		}
		m[c].Add(m[c], big.NewInt(n))
	}
	for _, id := range ids {
		snap, err := l.store.account(ctx, id, now)
		if err != nil {
			return rep, err
		}
		replayed, err := l.replayAt(ctx, id, now, func(e Event) error { return l.trace(e, flows, &rep, sum) })
		var bad *badEventError
		if errors.As(err, &bad) || errors.Is(err, ErrAccountNotFound) { // a snapshot without events
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: replay: %v", id, err))
			continue
		}
		if err != nil {
			return rep, err
		}
		rep.Accounts++
		rep.Events += replayed.Version
		if !reflect.DeepEqual(snap, replayed) {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: snapshot (version %d) differs from replay (version %d)", id, snap.Version, replayed.Version))
		}
		for c, b := range snap.Balances {
			sum(rep.Totals, c, b.Posted)
			if !snap.AllowNegative && b.Available < 0 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("%s: available %s balance %d is negative", id, c, b.Available))
			}
		}
	}
	tids := make([]string, 0, len(flows))
	for id := range flows {
		tids = append(tids, id)
	}
	sort.Strings(tids)
	for _, id := range tids {
		f := flows[id]
		rep.Transfers++
		switch {
		case f.debits != 1:
			rep.Problems = append(rep.Problems, fmt.Sprintf("transfer %s: debited %d times", id, f.debits))
		case f.credits+f.refunded > 1:
			rep.Problems = append(rep.Problems, fmt.Sprintf("transfer %s: credited %d and refunded %d times", id, f.credits, f.refunded))
		case f.credits+f.refunded == 0:
			rep.Pending++
			sum(rep.InFlight, f.currency, f.amount)
		}
	}
	currencies := map[string]bool{}
	for _, m := range []map[string]*big.Int{rep.Totals, rep.InFlight, rep.Deposits, rep.Withdrawals, rep.CapturedOut} {
		for c := range m {
			currencies[c] = true
		}
	}
	get := func(m map[string]*big.Int, c string) *big.Int {
		if m[c] == nil {
			return new(big.Int)
		}
		return m[c]
	}
	for c := range currencies {
		held := new(big.Int).Add(get(rep.Totals, c), get(rep.InFlight, c))
		flowed := new(big.Int).Sub(get(rep.Deposits, c), get(rep.Withdrawals, c))
		flowed.Sub(flowed, get(rep.CapturedOut, c))
		if held.Cmp(flowed) != 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: money not conserved: posted %s + in flight %s != deposits − withdrawals − captured out = %s",
				c, get(rep.Totals, c), get(rep.InFlight, c), flowed))
		}
	}
	return rep, nil
}

// trace adds an event to the money flows the report checks.
func (l *Ledger) trace(e Event, flows map[string]*flow, rep *VerifyReport, sum func(map[string]*big.Int, string, int64)) error {
	get := func(id, currency string, amount int64) *flow {
		f := flows[id]
		if f == nil {
			f = &flow{currency: currency, amount: amount}
			flows[id] = f
		}
		return f
	}
	switch e.Type {
	case EventDeposited, EventWithdrawn:
		var d MoneyData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		if e.Type == EventDeposited {
			sum(rep.Deposits, d.Currency, d.Amount)
		} else {
			sum(rep.Withdrawals, d.Currency, d.Amount)
		}
	case EventTransferDebited, EventTransferCredited, EventTransferRefunded:
		var d TransferData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		f := get(d.TransferID, d.Currency, d.Amount)
		switch e.Type {
		case EventTransferDebited:
			f.debits++
		case EventTransferCredited:
			f.credits++
		default:
			f.refunded++
		}
	case EventHoldCaptured:
		var d HoldData
		if err := decodeData(e, &d); err != nil {
			return err
		}
		if d.To == "" {
			sum(rep.CapturedOut, d.Currency, d.Captured)
		} else {
			get(d.TransferID, d.Currency, d.Captured).debits++
		}
	}
	return nil
}
