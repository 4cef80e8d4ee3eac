package ledger

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// PastBalances are an account's balances as one of its events left them: the answer of
// balance history.
type PastBalances struct {
	Account string `json:"account"`
	// Version and Time are the event's: the account's state after Version, as of Time.
	Version int64     `json:"version"`
	Time    time.Time `json:"time"`
	// Balances are settled at Time: Held counts the holds pending and unexpired then.
	Balances map[string]Balance `json:"balances"`
}

// HistoryQuery names the point of an account's history BalancesAt answers for: a version,
// or a moment (the last event at or before it). Neither means the latest event.
type HistoryQuery struct {
	Version int64
	At      time.Time
}

// historyFanout is how many versions one round of the search by time reads (in one
// pipelined round trip): a stream of n events takes about log(n)/log(17) rounds.
const historyFanout = 16

// BalancesAt returns an account's balances after the event q names, read from that event
// (every event records the balances it leaves behind; one reverse range read for a version
// or the latest, a search of about log17(versions) pipelined reads for a time). It returns
// ErrAccountNotFound; ErrNotFound when the account has no such version yet or was opened
// after q.At; and an error wrapping ErrInvalid for a malformed ID, a version below 1, or
// both a version and a time.
func (l *Ledger) BalancesAt(ctx context.Context, id string, q HistoryQuery) (PastBalances, error) {
	if err := ValidateID("account", id); err != nil {
		return PastBalances{}, err
	}
	switch {
	case q.Version != 0 && !q.At.IsZero():
		return PastBalances{}, invalidf("give a version or a time, not both")
	case q.Version < 0:
		return PastBalances{}, invalidf("version must be 1 or more")
	}
	key := l.store.keys.events(l.store.keys.partition(id), id)
	from := "+"
	if q.Version > 0 {
		from = strconv.FormatInt(q.Version, 10) + "-0"
	}
	e, ok, err := l.store.lastEvent(ctx, key, from)
	if err != nil {
		return PastBalances{}, err
	}
	if !ok {
		return PastBalances{}, ErrAccountNotFound // versions start at 1: the stream is empty
	}
	switch {
	case q.Version > e.Version:
		return PastBalances{}, fmt.Errorf("%w: account %s has no version %d (it is at version %d)", ErrNotFound, id, q.Version, e.Version)
	case !q.At.IsZero() && e.Time.After(q.At):
		if e, ok, err = l.store.lastEventBy(ctx, key, e.Version, q.At); err != nil {
			return PastBalances{}, err
		}
		if !ok {
			return PastBalances{}, fmt.Errorf("%w: account %s was opened after %s", ErrNotFound, id, q.At.UTC().Format(time.RFC3339Nano))
		}
	}
	out := PastBalances{Account: id, Version: e.Version, Time: e.Time, Balances: e.Balances}
	if out.Balances == nil {
		// An event written before events recorded their balances: replay up to it.
		acc, err := l.replay(ctx, id, e.Version, nil)
		if err != nil {
			return PastBalances{}, err
		}
		if acc.Version != e.Version {
			return PastBalances{}, fmt.Errorf("%w: the stream of %s ends before version %d", ErrInternal, id, e.Version)
		}
		acc.settle(e.Time)
		out.Balances = acc.Balances
	}
	return out, nil
}

// lastEvent returns the event of the stream key with the highest version at or below from
// (a stream ID, or "+" for the latest), and false when there is none.
func (s *store) lastEvent(ctx context.Context, key, from string) (Event, bool, error) {
	xs, err := s.rdb.XRevRangeN(ctx, key, from, "-", 1).Result()
	if err != nil {
		return Event{}, false, storeErr(ctx, err)
	}
	if len(xs) == 0 {
		return Event{}, false, nil
	}
	e, err := decodeStreamEntry(xs[0].Values)
	if err != nil {
		return Event{}, false, fmt.Errorf("%w: %s entry %s: %w", ErrInternal, key, xs[0].ID, err)
	}
	return e, true, nil
}

// lastEventBy returns the event of the stream key with the highest version whose time is
// at or before at, knowing that version hi is after it; false when even version 1 is.
// Event times never go back within a stream (see Account.last), so it narrows (lo, hi)
// by reading historyFanout versions spread over it per round trip.
func (s *store) lastEventBy(ctx context.Context, key string, hi int64, at time.Time) (Event, bool, error) {
	var (
		lo    int64 // 0, or a version at or before at
		found Event
	)
	for hi-lo > 1 {
		n := min(hi-lo-1, historyFanout)
		pipe := s.rdb.Pipeline()
		versions := make([]int64, n)
		cmds := make([]*redis.XMessageSliceCmd, n)
		for i := range versions {
			// Spread over (lo, hi), strictly increasing; every version when n = hi-lo-1.
			versions[i] = lo + (int64(i)+1)*(hi-lo)/(n+1)
			id := strconv.FormatInt(versions[i], 10) + "-0"
			cmds[i] = pipe.XRangeN(ctx, key, id, id, 1)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return Event{}, false, storeErr(ctx, err)
		}
		next := hi
		for i, c := range cmds {
			xs := c.Val()
			if len(xs) == 0 {
				return Event{}, false, fmt.Errorf("%w: %s has no version %d below its version %d", ErrInternal, key, versions[i], hi)
			}
			e, err := decodeStreamEntry(xs[0].Values)
			if err != nil {
				return Event{}, false, fmt.Errorf("%w: %s entry %s: %w", ErrInternal, key, xs[0].ID, err)
			}
			if e.Time.After(at) {
				next = versions[i]
				break
			}
			lo, found = versions[i], e
		}
		hi = next
	}
	return found, lo > 0, nil
}
