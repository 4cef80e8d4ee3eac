package ledger

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestHoldSetAgainstAMap drives holdSets with random placements and resolutions, copies
// (a copy must never see another's later changes) and balance reads at times that move
// both ways across expiries, and compares every answer with a plain map walked in full:
// the contents, the held sums (which the set keeps between expiries) and the changes
// between two copies (what a commit writes).
func TestHoldSetAgainstAMap(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			type copyOf struct {
				set   holdSet
				model map[string]pendingHold
			}
			cur := copyOf{model: map[string]pendingHold{}}
			var copies []copyOf
			size := []int{5, 50, 500}[seed%3] // IDs drawn from; the set's size hovers below
			for step := range 3_000 {
				id := fmt.Sprintf("h%d", rng.IntN(size))
				switch op := rng.IntN(20); {
				case op < 8:
					h := pendingHold{Currency: []string{"USD", "EUR"}[rng.IntN(2)], Amount: 1 + rng.Int64N(100),
						CreatedAt: t0, ExpiresAt: t0.Add(time.Duration(rng.IntN(60)) * time.Second)}
					cur.set.set(id, h)
					cur.model[id] = h
				case op < 15:
					cur.set.remove(id)
					delete(cur.model, id)
				case op < 17:
					copies = append(copies, copyOf{set: cur.set, model: maps.Clone(cur.model)})
				case op < 18 && len(copies) > 0:
					// Go on from an older copy, as a decision starts from a cached snapshot.
					c := copies[rng.IntN(len(copies))]
					cur = copyOf{set: c.set, model: maps.Clone(c.model)}
				default:
					// Read the balance at a time before, between or after the expiries.
					now := t0.Add(time.Duration(rng.IntN(70_000)-5_000) * time.Millisecond)
					want := map[string]int64{}
					for _, h := range cur.model {
						if now.Before(h.ExpiresAt) {
							want[h.Currency] += h.Amount
						}
					}
					got := map[string]int64{}
					for _, s := range cur.set.held(now) {
						got[s.currency] = s.amount
					}
					require.Equal(t, want, got, "step %d: held at %s", step, now.Format(time.TimeOnly))
				}
				requireHolds(t, cur.set, cur.model, "step %d", step)
				if len(copies) > 0 {
					c := copies[rng.IntN(len(copies))]
					requireHolds(t, c.set, c.model, "step %d: a copy", step)
					changed, removed := cur.set.changedSince(c.set)
					wantChanged, wantRemoved := mapChanges(cur.model, c.model)
					require.Equal(t, wantChanged, changed, "step %d: changed since a copy", step)
					require.Equal(t, wantRemoved, removed, "step %d: removed since a copy", step)
					require.Equal(t, len(wantChanged) == 0 && len(wantRemoved) == 0, cur.set.equal(c.set), "step %d", step)
				}
			}
		})
	}
}

// requireHolds requires s to hold exactly the holds of model.
func requireHolds(t *testing.T, s holdSet, model map[string]pendingHold, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	require.Equal(t, len(model), s.len(), msg)
	got := map[string]pendingHold{}
	for id, h := range s.all() {
		_, dup := got[id]
		require.False(t, dup, "%s: %s yielded twice", msg, id)
		got[id] = h
	}
	require.Equal(t, model, got, msg)
	require.Equal(t, append([]string{}, slices.Sorted(maps.Keys(model))...), append([]string{}, s.ids()...), msg)
	for id, h := range model {
		have, ok := s.get(id)
		require.True(t, ok && have == h, msg)
	}
}

// mapChanges is changedSince worked out on maps.
func mapChanges(now, before map[string]pendingHold) (changed, removed []string) {
	for id, h := range now {
		if was, ok := before[id]; !ok || !sameHold(was, h) {
			changed = append(changed, id)
		}
	}
	for id := range before {
		if _, ok := now[id]; !ok {
			removed = append(removed, id)
		}
	}
	slices.Sort(changed)
	slices.Sort(removed)
	return changed, removed
}

// TestHoldSetCopiesStayCheap checks what the set is for: on an account with 10,000 pending
// holds, a copy shares the holds and a hold's placement, resolution and a balance read
// between expiries do not walk them.
func TestHoldSetCopiesStayCheap(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	m := map[string]pendingHold{}
	for i := range 10_000 {
		m[fmt.Sprintf("h%05d", i)] = pendingHold{Currency: "USD", Amount: 1, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour + time.Duration(i)*time.Second)}
	}
	a := Account{ID: "a", Balances: map[string]Balance{"USD": {Posted: 20_000}}, holds: newHoldSet(m)}
	a.settle(t0)
	require.Equal(t, Balance{Posted: 20_000, Held: 10_000, Available: 10_000}, a.Balances["USD"])
	allocs := testing.AllocsPerRun(100, func() {
		c := a.clone()
		c.holds.set("new", pendingHold{Currency: "USD", Amount: 5, CreatedAt: t0, ExpiresAt: t0.Add(2 * time.Hour)})
		c.holds.remove("h00007")
		c.settle(t0.Add(time.Minute))
		if c.Balances["USD"].Held != 10_004 {
			t.Fatalf("held %d", c.Balances["USD"].Held)
		}
	})
	// A walk or a copy of 10,000 holds would allocate far more than this (a map of them
	// alone is hundreds of allocations of its buckets).
	require.Less(t, allocs, 30.0)
	require.Equal(t, 10_000, a.holds.len(), "the copy's changes are its own")
}

// TestAccountDiffSeesEveryField changes each field of Account in turn and requires diff,
// which verify and the tests compare snapshots with, to name the change: a field added to
// Account must be added to diff (and here).
func TestAccountDiffSeesEveryField(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	base := func() *Account {
		return &Account{ID: "a", Version: 3, Status: StatusOpen, Balances: map[string]Balance{"USD": {Posted: 5}},
			holds: newHoldSet(map[string]pendingHold{"h": {Currency: "USD", Amount: 1, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}})}
	}
	change := map[string]func(a *Account){
		"ID":             func(a *Account) { a.ID = "b" },
		"Version":        func(a *Account) { a.Version++ },
		"Status":         func(a *Account) { a.Status = StatusClosed },
		"AllowNegative":  func(a *Account) { a.AllowNegative = true },
		"Metadata":       func(a *Account) { a.Metadata = map[string]string{"k": "v"} },
		"Balances":       func(a *Account) { a.Balances["USD"] = Balance{Posted: 6} },
		"OverdraftLimit": func(a *Account) { a.OverdraftLimit = map[string]int64{"USD": 10} },
		"alerts":         func(a *Account) { a.alerts = map[string]Alert{"x": {ID: "x", Currency: "USD"}} },
		"last":           func(a *Account) { a.last = 1 },
		"holds":          func(a *Account) { a.holds.remove("h") },
	}
	fields := reflect.VisibleFields(reflect.TypeFor[Account]())
	require.Len(t, change, len(fields), "a field of Account without a case here")
	for _, f := range fields {
		t.Run(f.Name, func(t *testing.T) {
			fn, ok := change[f.Name]
			require.True(t, ok, "no case for Account.%s", f.Name)
			a, b := base(), base()
			require.Empty(t, a.diff(b))
			fn(b)
			require.NotEmpty(t, a.diff(b))
			require.NotEmpty(t, b.diff(a))
		})
	}
	// The holds are compared by content: the same holds reached another way are equal.
	a, b := base(), base()
	b.holds.set("x", pendingHold{Currency: "USD", Amount: 1, CreatedAt: t0, ExpiresAt: t0})
	b.holds.remove("x")
	a.settle(t0)
	b.settle(t0)
	require.Empty(t, a.diff(b))
}
