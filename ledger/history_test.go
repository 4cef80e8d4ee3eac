package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// historyModel folds an account's events into balances independently of the ledger's own
// apply: posted per currency, and the pending holds with their expiry.
type historyModel struct {
	posted map[string]int64
	holds  map[string]ledger.HoldData
}

func newHistoryModel() *historyModel {
	return &historyModel{posted: map[string]int64{}, holds: map[string]ledger.HoldData{}}
}

func (m *historyModel) add(t *testing.T, e ledger.Event) {
	t.Helper()
	switch e.Type {
	case ledger.EventDeposited, ledger.EventWithdrawn:
		var d ledger.MoneyData
		require.NoError(t, json.Unmarshal(e.Data, &d))
		if e.Type == ledger.EventWithdrawn {
			d.Amount = -d.Amount
		}
		m.posted[d.Currency] += d.Amount
	case ledger.EventTransferDebited, ledger.EventTransferCredited, ledger.EventTransferRefunded:
		var d ledger.TransferData
		require.NoError(t, json.Unmarshal(e.Data, &d))
		if e.Type == ledger.EventTransferDebited {
			d.Amount = -d.Amount
		}
		m.posted[d.Currency] += d.Amount
	case ledger.EventHoldPlaced:
		var d ledger.HoldData
		require.NoError(t, json.Unmarshal(e.Data, &d))
		m.holds[d.HoldID] = d
		m.posted[d.Currency] += 0 // the currency has a balance from now on
	case ledger.EventHoldCaptured, ledger.EventHoldVoided, ledger.EventHoldExpired:
		var d ledger.HoldData
		require.NoError(t, json.Unmarshal(e.Data, &d))
		delete(m.holds, d.HoldID)
		m.posted[d.Currency] -= d.Captured
	}
}

// at returns the balances at time now: a hold counts until it expires.
func (m *historyModel) at(now time.Time) map[string]ledger.Balance {
	out := map[string]ledger.Balance{}
	for c, p := range m.posted {
		out[c] = ledger.Balance{Posted: p, Available: p}
	}
	for _, h := range m.holds {
		if now.Before(h.ExpiresAt) {
			b := out[h.Currency]
			b.Held += h.Amount
			b.Available -= h.Amount
			out[h.Currency] = b
		}
	}
	return out
}

// allEvents returns an account's whole stream.
func allEvents(t *testing.T, l *ledger.Ledger, id string) []ledger.Event {
	t.Helper()
	var out []ledger.Event
	var after int64
	for {
		evs, next, err := l.Events(context.Background(), id, after, ledger.MaxEventsPage)
		require.NoError(t, err)
		out = append(out, evs...)
		if next == 0 {
			return out
		}
		after = next
	}
}

// TestBalanceHistoryMatchesReplay runs random deposits, withdrawals, holds (some expiring,
// some captured or voided), same- and cross-partition transfers through two Ledgers whose
// clocks disagree by 40 ms, then checks, for every account: event times never go back;
// the balances at every version and at sampled times are those an independent fold of the
// events to that point gives; and an account's history is there with no opt-in.
func TestBalanceHistoryMatchesReplay(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			rdb := b.Start(t)
			// A clock that runs fast (10 ms a reading), so that holds of a second or two
			// expire during the run, and a replica whose clock is 40 ms behind it: without
			// keeping event times in order, its events would be dated before the ones they
			// follow.
			start, readings := time.Now(), atomic.Int64{}
			fast := func() time.Time { return start.Add(time.Duration(readings.Add(1)) * 10 * time.Millisecond) }
			ahead := MustOpen(t, rdb, ledger.Config{Partitions: 4, Clock: fast})
			behind := MustOpen(t, rdb, ledger.Config{Partitions: 4, Clock: func() time.Time { return fast().Add(-40 * time.Millisecond) }})
			stopSweeper := runSweeper(t, ahead, ledger.SweeperConfig{})
			const n = 8
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("hist-%d", i)
				MustOpenAccount(t, ahead, ids[i], false)
			}
			var (
				mu    sync.Mutex
				holds [][2]string // account, hold
			)
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 7))
					for range 120 {
						l := ahead
						if r.IntN(2) == 0 {
							l = behind
						}
						acc := ids[r.IntN(n)]
						cur := []string{"USD", "EUR"}[r.IntN(2)]
						amount := int64(1 + r.IntN(100))
						var err error
						switch op := r.IntN(10); {
						case op < 3:
							_, err = l.Deposit(ctx, ledger.Deposit{Account: acc, Currency: cur, Amount: amount}, ledger.WriteOptions{})
						case op < 5:
							_, err = l.Withdraw(ctx, ledger.Withdraw{Account: acc, Currency: cur, Amount: amount}, ledger.WriteOptions{})
						case op < 7:
							id := fmt.Sprintf("h-%d-%d", w, r.Uint32())
							_, err = l.PlaceHold(ctx, ledger.PlaceHold{Account: acc, ID: id, Currency: cur, Amount: amount,
								Timeout: time.Duration(1+r.IntN(2)) * time.Second})
							if err == nil {
								mu.Lock()
								holds = append(holds, [2]string{acc, id})
								mu.Unlock()
							}
						case op < 8:
							mu.Lock()
							var h [2]string
							if len(holds) > 0 {
								h = holds[r.IntN(len(holds))]
							}
							mu.Unlock()
							if h[0] == "" {
								continue
							}
							if r.IntN(2) == 0 {
								_, err = l.CaptureHold(ctx, h[0], h[1], 0, "", ledger.WriteOptions{})
							} else {
								_, err = l.VoidHold(ctx, h[0], h[1], ledger.WriteOptions{})
							}
						default:
							to := ids[r.IntN(n)]
							if to == acc {
								continue
							}
							_, err = l.CreateTransfer(ctx, ledger.TransferRequest{From: acc, To: to, Currency: cur, Amount: amount})
						}
						if err != nil && !errors.Is(err, ledger.ErrInsufficientFunds) && !errors.Is(err, ledger.ErrHoldNotPending) &&
							!errors.Is(err, ledger.ErrVersionConflict) {
							t.Errorf("%s: %v", acc, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			stopSweeper() // before the streams are read: its HoldExpired events would follow them

			r := rand.New(rand.NewPCG(1, 2))
			expiredSeen := 0 // events after which a hold had expired but was still pending
			for _, id := range ids {
				events := allEvents(t, ahead, id)
				require.NotEmpty(t, events)
				m := newHistoryModel()
				want := make([]map[string]ledger.Balance, len(events))
				for i, e := range events {
					if i > 0 {
						require.False(t, e.Time.Before(events[i-1].Time), "%s: event %d is dated %s, before event %d (%s)", id, e.Version, e.Time, e.Version-1, events[i-1].Time)
					}
					m.add(t, e)
					want[i] = m.at(e.Time)
					for _, h := range m.holds {
						if !e.Time.Before(h.ExpiresAt) {
							expiredSeen++
							break
						}
					}
					require.Equal(t, want[i], e.Balances, "%s: balances recorded by event %d", id, e.Version)
				}
				for i, e := range events {
					got, err := ahead.BalancesAt(ctx, id, ledger.HistoryQuery{Version: e.Version})
					require.NoError(t, err)
					require.Equal(t, ledger.PastBalances{Account: id, Version: e.Version, Time: e.Time, Balances: want[i]}, got)
				}
				// lastBy returns the index of the last event at or before at, or -1.
				lastBy := func(at time.Time) int {
					k := -1
					for i, e := range events {
						if !e.Time.After(at) {
							k = i
						}
					}
					return k
				}
				first, last := events[0].Time, events[len(events)-1].Time
				times := []time.Time{first.Add(-time.Nanosecond), first, last, last.Add(time.Hour)}
				for range 40 {
					e := events[r.IntN(len(events))]
					times = append(times, e.Time, e.Time.Add(-time.Nanosecond), e.Time.Add(time.Duration(r.IntN(int(time.Millisecond)))))
				}
				for range 20 {
					times = append(times, first.Add(time.Duration(r.Int64N(int64(last.Sub(first))+1))))
				}
				for _, at := range times {
					got, err := behind.BalancesAt(ctx, id, ledger.HistoryQuery{At: at})
					k := lastBy(at)
					if k < 0 {
						require.ErrorIs(t, err, ledger.ErrNotFound, "%s at %s, before it was opened", id, at)
						continue
					}
					require.NoError(t, err)
					require.Equal(t, ledger.PastBalances{Account: id, Version: events[k].Version, Time: events[k].Time, Balances: want[k]}, got, "%s at %s", id, at)
				}
				latest, err := ahead.BalancesAt(ctx, id, ledger.HistoryQuery{})
				require.NoError(t, err)
				require.Equal(t, events[len(events)-1].Version, latest.Version)
			}
			t.Logf("clock readings %d, expired seen %d", readings.Load(), expiredSeen)
			require.Positive(t, expiredSeen, "the run must have history in which an expired hold no longer counts")
			rep, err := ahead.Verify(ctx)
			require.NoError(t, err)
			require.True(t, rep.OK(), "%v", rep.Problems)
		})
	}
}

// TestBalanceHistoryErrors covers the answers that are not balances.
func TestBalanceHistoryErrors(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, redistest.MustStart(t).Client(), ledger.Config{})
	MustOpenAccount(t, l, "alice", false)
	_, err := l.Deposit(ctx, ledger.Deposit{Account: "alice", Currency: "USD", Amount: 5}, ledger.WriteOptions{})
	require.NoError(t, err)

	_, err = l.BalancesAt(ctx, "nobody", ledger.HistoryQuery{})
	require.ErrorIs(t, err, ledger.ErrAccountNotFound)
	_, err = l.BalancesAt(ctx, "nobody", ledger.HistoryQuery{Version: 1})
	require.ErrorIs(t, err, ledger.ErrAccountNotFound)
	_, err = l.BalancesAt(ctx, "alice", ledger.HistoryQuery{Version: 3})
	require.ErrorIs(t, err, ledger.ErrNotFound)
	require.ErrorContains(t, err, "it is at version 2")
	_, err = l.BalancesAt(ctx, "alice", ledger.HistoryQuery{At: time.Now().Add(-time.Hour)})
	require.ErrorIs(t, err, ledger.ErrNotFound)
	_, err = l.BalancesAt(ctx, "alice", ledger.HistoryQuery{Version: 1, At: time.Now()})
	require.ErrorIs(t, err, ledger.ErrInvalid)
	_, err = l.BalancesAt(ctx, "alice", ledger.HistoryQuery{Version: -1})
	require.ErrorIs(t, err, ledger.ErrInvalid)
	_, err = l.BalancesAt(ctx, "bad id!", ledger.HistoryQuery{})
	require.ErrorIs(t, err, ledger.ErrInvalid)

	opened, err := l.BalancesAt(ctx, "alice", ledger.HistoryQuery{Version: 1})
	require.NoError(t, err)
	require.Equal(t, map[string]ledger.Balance{}, opened.Balances, "a new account has its opening event, with no balances")
}

// TestBalanceHistoryOfOlderEvents: events written before they recorded their balances
// are answered by replaying the stream up to them.
func TestBalanceHistoryOfOlderEvents(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.MustStart(t).Client()
	l := MustOpen(t, rdb, ledger.Config{})
	MustOpenAccount(t, l, "old", false)
	for _, amount := range []int64{10, 20, 30} {
		_, err := l.Deposit(ctx, ledger.Deposit{Account: "old", Currency: "USD", Amount: amount}, ledger.WriteOptions{})
		require.NoError(t, err)
	}
	_, err := l.PlaceHold(ctx, ledger.PlaceHold{Account: "old", ID: "h", Currency: "USD", Amount: 15, Timeout: time.Hour})
	require.NoError(t, err)
	events := allEvents(t, l, "old")

	// Write the stream again as an older Tally did: without balances.
	key := l.EventsKey("old")
	require.NoError(t, rdb.Del(ctx, key).Err())
	for _, e := range events {
		e.Balances = nil
		raw, err := json.Marshal(e)
		require.NoError(t, err)
		require.NotContains(t, string(raw), "balances")
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: fmt.Sprintf("%d-0", e.Version), Values: []any{"type", e.Type, "event", string(raw)}}).Err())
	}
	got, err := l.BalancesAt(ctx, "old", ledger.HistoryQuery{Version: 3})
	require.NoError(t, err)
	require.Equal(t, map[string]ledger.Balance{"USD": {Posted: 30, Available: 30}}, got.Balances)
	got, err = l.BalancesAt(ctx, "old", ledger.HistoryQuery{At: events[4].Time})
	require.NoError(t, err)
	require.Equal(t, int64(5), got.Version)
	require.Equal(t, map[string]ledger.Balance{"USD": {Posted: 60, Held: 15, Available: 45}}, got.Balances)
}
