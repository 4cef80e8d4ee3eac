package ledger

import (
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
	assert.Equal(t, int64(10), c.take(0, []string{"a"}, now)["a"].acc.Balances["USD"].Posted, "a copy")

	c.put(0, "a", cachedAccount("a", 1, 99))
	assert.Equal(t, int64(2), c.take(0, []string{"a"}, now)["a"].acc.Version, "an older snapshot does not replace a newer one")

	c.drop(0, []string{"a"})
	assert.Nil(t, c.take(0, []string{"a"}, now))

	c.put(0, "c", cachedAccount("c", 1, 1))
	c.put(0, "d", cachedAccount("d", 1, 1))
	require.NotNil(t, c.take(0, []string{"b", "c", "d"}, now))
	c.put(0, "e", cachedAccount("e", 1, 1)) // full: the partition starts over
	assert.Nil(t, c.take(0, []string{"b"}, now))
	assert.NotNil(t, c.take(0, []string{"e"}, now))
	c.put(0, "e", cachedAccount("e", 2, 1)) // a newer snapshot of a cached account fits
	assert.Equal(t, int64(2), c.take(0, []string{"e"}, now)["e"].acc.Version)
}
