package ledger

import (
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func cachedAccount(id string, version, posted int64) snapshot {
	return snapshot{acc: &Account{ID: id, Version: version, Balances: map[string]Balance{"USD": {Posted: posted}}},
		fields: map[string]bool{fieldVersion: true, prefixPosted + "USD": true}}
}

// The cache answers only when it holds every account asked for, hands out copies settled
// for the moment asked, never goes back to an older version, and keeps each partition
// within its share.
func TestSnapCache(t *testing.T) {
	now := time.Now()
	assert.Nil(t, newSnapCache(4, -1), "off")

	c := newSnapCache(2, 6) // 3 per partition
	c.put(0, "a", cachedAccount("a", 2, 10))
	c.put(0, "b", cachedAccount("b", 1, 5))
	assert.Nil(t, c.take(0, []string{"a", "x"}, now), "one account missing: read them all")
	assert.Nil(t, c.take(1, []string{"a"}, now), "another partition's share")

	got := c.take(0, []string{"a", "b"}, now)
	require.Len(t, got, 2)
	assert.Equal(t, int64(10), got["a"].acc.Balances["USD"].Available, "settled")
	got["a"].acc.Balances["USD"] = Balance{Posted: -1}
	got["a"].acc.Version = 99
	again := c.take(0, []string{"a"}, now)["a"].acc
	assert.Equal(t, int64(10), again.Balances["USD"].Posted, "a copy")
	assert.Equal(t, int64(2), again.Version, "a copy")

	c.put(0, "a", cachedAccount("a", 1, 99))
	assert.Equal(t, int64(2), c.take(0, []string{"a"}, now)["a"].acc.Version, "an older snapshot does not replace a newer one")

	c.drop(0, []string{"a"})
	assert.Nil(t, c.take(0, []string{"a"}, now))

	c.put(0, "c", cachedAccount("c", 1, 1))
	c.put(0, "d", cachedAccount("d", 1, 1))
	require.NotNil(t, c.take(0, []string{"b", "c", "d"}, now))
	c.put(0, "e", cachedAccount("e", 1, 1)) // full: one of the others goes
	assert.NotNil(t, c.take(0, []string{"e"}, now))
	gone := 0
	for _, id := range []string{"b", "c", "d"} {
		if c.take(0, []string{id}, now) == nil {
			gone++
		}
	}
	assert.Equal(t, 1, gone, "a full partition forgets one snapshot for each it takes in")
	c.put(0, "e", cachedAccount("e", 2, 1)) // a newer snapshot of a cached account replaces it
	assert.Equal(t, int64(2), c.take(0, []string{"e"}, now)["e"].acc.Version)
	assert.Equal(t, 3, len(c.parts[0].m))

	first := c.shared(map[string]bool{"v": true, "b:USD": true})
	second := c.shared(map[string]bool{"b:USD": true, "v": true})
	first["probe"] = true // only to tell whether the two are one map
	assert.True(t, second["probe"], "accounts with the same field names share one set")
	other := c.shared(map[string]bool{"v": true})
	assert.False(t, other["probe"])
}

// An account whose version check failed is kept out of the cache for sharedFor: another
// process writes it too, and a cached snapshot of it would mostly be stale.
func TestSnapCacheSkipsSharedAccounts(t *testing.T) {
	now := time.Now()
	c := newSnapCache(1, 8)
	c.put(0, "a", cachedAccount("a", 1, 1))
	c.put(0, "b", cachedAccount("b", 1, 1))
	c.conflicted(0, []string{"a"})
	assert.Nil(t, c.take(0, []string{"a"}, now), "forgotten")
	c.put(0, "a", cachedAccount("a", 2, 1))
	assert.Nil(t, c.take(0, []string{"a"}, now), "not cached again while shared")
	assert.NotNil(t, c.take(0, []string{"b"}, now), "other accounts stay")

	c.parts[0].shared["a"] = now.Add(-time.Millisecond) // the window has passed
	c.put(0, "a", cachedAccount("a", 3, 1))
	assert.Equal(t, int64(3), c.take(0, []string{"a"}, now)["a"].acc.Version)
}

// A commit that leaves an account with the field names it had keeps the cached set (no
// lookup of the shared copy); one that changes them gets the shared copy of the new set.
func TestSnapCacheKeepsAnAccountsFieldSet(t *testing.T) {
	c := newSnapCache(1, 8)
	c.put(0, "a", cachedAccount("a", 1, 10))
	first := c.parts[0].m["a"].fields
	c.sets = map[string]map[string]bool{} // a lookup now would store and return the new map
	next := cachedAccount("a", 2, 20)
	c.put(0, "a", next)
	assert.Equal(t, reflect.ValueOf(first).Pointer(), reflect.ValueOf(c.parts[0].m["a"].fields).Pointer(), "the same names: the set it had")
	assert.Empty(t, c.sets, "no lookup")

	grown := cachedAccount("a", 3, 30)
	grown.fields[prefixPosted+"EUR"] = true
	c.put(0, "a", grown)
	assert.Len(t, c.parts[0].m["a"].fields, 3, "new names: the new set")
	assert.Len(t, c.sets, 1, "looked up (and stored) as the shared copy")
}
