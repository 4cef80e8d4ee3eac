package ledger

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// snapCache remembers, per partition, the snapshots this process's commits left behind, so
// that the next batch on the same accounts decides without reading them again: one round
// trip per batch instead of two when nothing else is to be read, and a read of only the
// records otherwise (an account's snapshot grows with its pending holds, a field each). It
// is only ever a guess. The commit checks every version a
// decision was made on, so a snapshot that another process (or a restarted Redis) made
// stale costs a skipped slice and a fresh read, never a wrong write; and a request refused
// on a cached snapshot without a record (no version check) is decided again on a fresh
// read unless its accounts committed in the same call (see attempt).
//
// An account whose version check failed (another process writes it too) is not cached for
// sharedFor afterwards: replicas taking turns on a hot account would otherwise pay a failed
// commit at each turn, on top of the read and commit they pay without the cache.
//
// Each partition holds at most size/partitions snapshots; a full partition forgets an
// arbitrary one for each it takes in.
type snapCache struct {
	parts     []snapPart
	per       int           // snapshots per partition
	sharedFor time.Duration // see conflicted

	// sets holds one copy of each set of snapshot fields (most accounts have the same few
	// field names), shared read-only by the cached snapshots.
	setsMu sync.Mutex
	sets   map[string]map[string]bool
}

// maxFieldSets bounds snapCache.sets; past it a snapshot keeps its own set.
const maxFieldSets = 1024

type snapPart struct {
	mu     sync.Mutex
	m      map[string]cachedSnapshot
	shared map[string]time.Time // accounts not cached until then (see conflicted)
}

// sharedFor is how long an account whose version check failed is not cached.
const sharedFor = 5 * time.Second

// cachedSnapshot is a snapshot kept small: its account without the balances map (a map
// costs ~400 bytes even for one currency), the posted balances beside it.
type cachedSnapshot struct {
	acc    *Account // Balances nil; its other maps shared read-only
	posted []postedBalance
	fields map[string]bool // shared read-only (snapCache.sets)
}

type postedBalance struct {
	currency string
	amount   int64
}

func newSnapCache(partitions, size int) *snapCache {
	if size <= 0 {
		return nil
	}
	return &snapCache{parts: make([]snapPart, partitions), per: max(1, size/partitions), sharedFor: sharedFor,
		sets: map[string]map[string]bool{}}
}

// take returns the snapshots of accounts (all of one partition p), settled for now, when
// every one of them is cached; nil otherwise. Like a read's snapshots they must not be
// changed (decisions work on clones).
func (c *snapCache) take(p int, accounts []string, now time.Time) map[string]snapshot {
	if c == nil || len(accounts) == 0 {
		return nil
	}
	sp := &c.parts[p]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for _, id := range accounts {
		if _, ok := sp.m[id]; !ok {
			return nil
		}
	}
	out := make(map[string]snapshot, len(accounts))
	for _, id := range accounts {
		cs := sp.m[id]
		acc := *cs.acc
		acc.Balances = make(map[string]Balance, len(cs.posted))
		for _, b := range cs.posted {
			acc.Balances[b.currency] = Balance{Posted: b.amount}
		}
		acc.settle(now)
		out[id] = snapshot{acc: &acc, fields: cs.fields}
	}
	return out
}

// put remembers s as account id's snapshot unless a newer one is cached. s's account and
// maps must not change afterwards.
func (c *snapCache) put(p int, id string, s snapshot) {
	if c == nil {
		return
	}
	acc := *s.acc
	acc.Balances = nil
	cs := cachedSnapshot{acc: &acc, posted: make([]postedBalance, 0, len(s.acc.Balances))}
	for cur, b := range s.acc.Balances {
		cs.posted = append(cs.posted, postedBalance{cur, b.Posted})
	}
	sp := &c.parts[p]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if until, ok := sp.shared[id]; ok {
		if time.Now().Before(until) {
			return
		}
		delete(sp.shared, id)
	}
	have, cached := sp.m[id]
	if cached && have.acc.Version > s.acc.Version {
		return
	}
	// An account's field names rarely change between its commits: keep the set it has
	// rather than sorting the names again to find the shared copy.
	if cached && sameKeys(have.fields, s.fields) {
		cs.fields = have.fields
	} else {
		cs.fields = c.shared(s.fields)
	}
	if sp.m == nil {
		sp.m = make(map[string]cachedSnapshot, min(c.per, 64))
	}
	if !cached && len(sp.m) >= c.per {
		for k := range sp.m {
			delete(sp.m, k)
			break
		}
	}
	sp.m[id] = cs
}

// drop forgets the snapshots of accounts: the next batch reads them.
func (c *snapCache) drop(p int, accounts []string) {
	if c == nil {
		return
	}
	sp := &c.parts[p]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for _, id := range accounts {
		delete(sp.m, id)
	}
}

// conflicted forgets the snapshots of accounts whose version check failed, and keeps them
// out of the cache for sharedFor: another process writes them too.
func (c *snapCache) conflicted(p int, accounts []string) {
	if c == nil {
		return
	}
	until := time.Now().Add(c.sharedFor)
	sp := &c.parts[p]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.shared == nil || len(sp.shared) >= c.per {
		sp.shared = map[string]time.Time{}
	}
	for _, id := range accounts {
		delete(sp.m, id)
		sp.shared[id] = until
	}
}

// sameKeys reports whether a and b hold the same keys.
func sameKeys(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range b {
		if !a[k] {
			return false
		}
	}
	return true
}

// shared returns the cache's copy of the field set f (f itself when it is new), so that
// accounts with the same field names share one map. Neither may change afterwards.
func (c *snapCache) shared(f map[string]bool) map[string]bool {
	key := strings.Join(slices.Sorted(maps.Keys(f)), "\x00")
	c.setsMu.Lock()
	defer c.setsMu.Unlock()
	if have, ok := c.sets[key]; ok {
		return have
	}
	if len(c.sets) < maxFieldSets {
		c.sets[key] = f
	}
	return f
}
