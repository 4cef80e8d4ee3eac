package ledger

import (
	"iter"
	"maps"
	"math"
	"slices"
	"time"
)

// holdSet is an account's pending holds by ID, built so that an account with thousands of
// them costs about what one with a few does per write:
//
//   - Copying it costs nothing: a plain copy of the struct. Its maps and sums are never
//     written once a set holds them: a base map, shared by every copy, and the changes
//     made since (put, gone), which each change replaces with new maps. A change to one
//     copy therefore never shows in another. Past √n changes a change builds a new base,
//     so a change costs O(√n) amortized.
//   - The difference between two sets that share a base is found from their changes alone
//     (changedSince), which is what a commit writes.
//   - It keeps the held amount per currency over a span of time in which no hold expires
//     (held), so settling a balance does not walk the holds until one expires.
//
// The zero holdSet is empty.
type holdSet struct {
	base *holdBase
	put  map[string]pendingHold // placed (or replaced) since base
	gone map[string]struct{}    // of base, resolved since; never also in put
	n    int

	// sums is the amount held per currency by the holds live at every instant of
	// [from, until) (Unix ns): no hold expires inside that span. Valid when spanned.
	sums        []heldSum
	from, until int64
	spanned     bool
}

// holdBase is the shared, read-only part of holdSets.
type holdBase struct{ m map[string]pendingHold }

// heldSum is the amount held in one currency.
type heldSum struct {
	currency string
	amount   int64
}

// newHoldSet returns the set of the holds of m, which it keeps (m must not change).
func newHoldSet(m map[string]pendingHold) holdSet {
	if len(m) == 0 {
		return holdSet{}
	}
	return holdSet{base: &holdBase{m: m}, n: len(m)}
}

// len returns the number of pending holds.
func (s holdSet) len() int { return s.n }

// get returns the pending hold id.
func (s holdSet) get(id string) (pendingHold, bool) {
	if h, ok := s.put[id]; ok {
		return h, true
	}
	if _, ok := s.gone[id]; ok || s.base == nil {
		return pendingHold{}, false
	}
	h, ok := s.base.m[id]
	return h, ok
}

// all yields every pending hold, in no order.
func (s holdSet) all() iter.Seq2[string, pendingHold] {
	return func(yield func(string, pendingHold) bool) {
		for id, h := range s.put {
			if !yield(id, h) {
				return
			}
		}
		if s.base == nil {
			return
		}
		for id, h := range s.base.m {
			if _, ok := s.put[id]; ok {
				continue
			}
			if _, ok := s.gone[id]; ok {
				continue
			}
			if !yield(id, h) {
				return
			}
		}
	}
}

// ids returns the IDs of the pending holds in order.
func (s holdSet) ids() []string {
	ids := make([]string, 0, s.n)
	for id := range s.all() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// set places (or replaces) hold id.
func (s *holdSet) set(id string, h pendingHold) {
	old, had := s.get(id)
	s.put = with(s.put, id, h)
	if _, ok := s.gone[id]; ok {
		s.gone = without(s.gone, id)
	}
	if had {
		s.unsum(old)
	} else {
		s.n++
	}
	s.sum(h)
	s.compact()
}

// remove resolves hold id; it is not an error when there is none.
func (s *holdSet) remove(id string) {
	old, had := s.get(id)
	if !had {
		return
	}
	if s.n == 1 {
		*s = holdSet{} // nothing left to share
		return
	}
	if _, ok := s.put[id]; ok {
		s.put = without(s.put, id)
	}
	if s.base != nil {
		if _, ok := s.base.m[id]; ok {
			s.gone = with(s.gone, id, struct{}{})
		}
	}
	s.n--
	s.unsum(old)
	s.compact()
}

// with returns a copy of m with k set to v.
func with[V any](m map[string]V, k string, v V) map[string]V {
	out := make(map[string]V, len(m)+1)
	maps.Copy(out, m)
	out[k] = v
	return out
}

// without returns a copy of m without k.
func without[V any](m map[string]V, k string) map[string]V {
	if len(m) == 1 {
		return nil
	}
	out := make(map[string]V, len(m)-1)
	for key, v := range m {
		if key != k {
			out[key] = v
		}
	}
	return out
}

// compact builds a new base once the changes outgrow √n (at least 8): a change copies the
// changes, so they are kept small, and rebuilding the base costs n.
func (s *holdSet) compact() {
	if len(s.put)+len(s.gone) <= max(8, int(math.Sqrt(float64(s.n)))) {
		return
	}
	m := make(map[string]pendingHold, s.n)
	for id, h := range s.all() {
		m[id] = h
	}
	s.base, s.put, s.gone = &holdBase{m: m}, nil, nil
}

// equal reports whether s and o hold the same holds.
func (s holdSet) equal(o holdSet) bool {
	if s.n != o.n {
		return false
	}
	for id, h := range s.all() {
		if was, ok := o.get(id); !ok || !sameHold(was, h) {
			return false
		}
	}
	return true
}

// sameHold reports whether a and b are the same hold as a snapshot stores it (times to the
// millisecond).
func sameHold(a, b pendingHold) bool {
	return a.Currency == b.Currency && a.Amount == b.Amount &&
		a.ExpiresAt.UnixMilli() == b.ExpiresAt.UnixMilli() && a.CreatedAt.UnixMilli() == b.CreatedAt.UnixMilli()
}

// changedSince returns the IDs of the holds of s that before does not hold as they are
// (new or changed), and of those before holds that s does not, each in order. When the two
// share a base only their changes can differ; otherwise every hold is compared.
func (s holdSet) changedSince(before holdSet) (changed, removed []string) {
	compare := func(id string) {
		h, now := s.get(id)
		was, had := before.get(id)
		switch {
		case now && (!had || !sameHold(was, h)):
			changed = append(changed, id)
		case !now && had:
			removed = append(removed, id)
		}
	}
	if s.base != before.base {
		for id := range s.all() {
			compare(id)
		}
		for id := range before.all() {
			if _, ok := s.get(id); !ok {
				removed = append(removed, id)
			}
		}
	} else {
		seen := map[string]bool{}
		for _, ids := range []iter.Seq[string]{maps.Keys(s.put), maps.Keys(s.gone), maps.Keys(before.put), maps.Keys(before.gone)} {
			for id := range ids {
				if !seen[id] {
					seen[id] = true
					compare(id)
				}
			}
		}
	}
	slices.Sort(changed)
	slices.Sort(removed)
	return changed, removed
}

// held returns the amount held per currency by the holds live at now (a hold whose expiry
// has passed no longer counts), walking the holds only when now is outside the span the
// last walk found no expiry in.
func (s *holdSet) held(now time.Time) []heldSum {
	t := now.UnixNano()
	if s.spanned && s.from <= t && t < s.until {
		return s.sums
	}
	var sums []heldSum
	from, until := int64(math.MinInt64), int64(math.MaxInt64)
	for _, h := range s.all() {
		if e := h.ExpiresAt.UnixNano(); t < e {
			sums = addHeld(sums, h.Currency, h.Amount)
			until = min(until, e)
		} else {
			from = max(from, e)
		}
	}
	s.sums, s.from, s.until, s.spanned = sums, from, until, true
	return sums
}

// sum counts a newly placed hold h in the span's sums: live for the part of the span
// before its expiry, which then ends the span.
func (s *holdSet) sum(h pendingHold) {
	if !s.spanned {
		return
	}
	if e := h.ExpiresAt.UnixNano(); e > s.from {
		s.sums = addHeld(slices.Clone(s.sums), h.Currency, h.Amount)
		s.until = min(s.until, e)
	}
}

// unsum takes a resolved hold h out of the span's sums, where it counted when it expires
// after the span starts (no hold expires inside it).
func (s *holdSet) unsum(h pendingHold) {
	if !s.spanned {
		return
	}
	if e := h.ExpiresAt.UnixNano(); e > s.from {
		s.sums = addHeld(slices.Clone(s.sums), h.Currency, -h.Amount)
	}
}

// addHeld adds amount to currency's sum in sums (in place), dropping a sum that reaches 0.
func addHeld(sums []heldSum, currency string, amount int64) []heldSum {
	for i := range sums {
		if sums[i].currency == currency {
			sums[i].amount += amount
			if sums[i].amount == 0 {
				return slices.Delete(sums, i, i+1)
			}
			return sums
		}
	}
	return append(sums, heldSum{currency, amount})
}

// heldIn returns the amount sums holds in currency.
func heldIn(sums []heldSum, currency string) int64 {
	for _, h := range sums {
		if h.currency == currency {
			return h.amount
		}
	}
	return 0
}
