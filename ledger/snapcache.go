package ledger

import (
	"sync"
	"time"
)

// snapCache remembers, per partition, the snapshots this process's commits left behind, so
// that the next batch on the same accounts decides without reading them again: one round
// trip per batch instead of two. It is only ever a guess. The commit checks every version a
// decision was made on, so a snapshot that another process (or a restarted Redis) made
// stale costs a skipped slice and a read, never a wrong write; and a request refused on a
// cached snapshot without a record (no version check) is decided again on a fresh read
// unless its accounts committed in the same call (see attempt).
//
// Each partition holds at most max/partitions snapshots; a partition that is full is
// emptied before it takes another, which keeps hot accounts cached and costs spread
// workloads one read per account and turn.
type snapCache struct {
	parts []snapPart
	per   int // snapshots per partition
}

type snapPart struct {
	mu sync.Mutex
	m  map[string]snapshot
}

func newSnapCache(partitions, size int) *snapCache {
	if size <= 0 {
		return nil
	}
	return &snapCache{parts: make([]snapPart, partitions), per: max(1, size/partitions)}
}

// take returns copies of the snapshots of accounts (all of one partition p), settled for
// now, when every one of them is cached; nil otherwise.
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
		s := sp.m[id]
		acc := s.acc.clone()
		acc.settle(now)
		out[id] = snapshot{acc: acc, fields: s.fields}
	}
	return out
}

// put remembers s as account id's snapshot unless a newer one is cached. s and its maps
// must not change afterwards.
func (c *snapCache) put(p int, id string, s snapshot) {
	if c == nil {
		return
	}
	sp := &c.parts[p]
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if have, ok := sp.m[id]; ok && have.acc.Version > s.acc.Version {
		return
	}
	if sp.m == nil || (len(sp.m) >= c.per && !hasKey(sp.m, id)) {
		sp.m = make(map[string]snapshot, min(c.per, 64))
	}
	sp.m[id] = s
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

func hasKey(m map[string]snapshot, k string) bool { _, ok := m[k]; return ok }
