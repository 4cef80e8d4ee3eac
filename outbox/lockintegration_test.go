package outbox

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/lock"
)

// *lock.Locker is the Leaser cmd wires into the relay.
var _ Leaser = (*lock.Locker)(nil)

// TestRelayWithLockPackage: two relays leasing partitions through package lock (Redlock over
// three independent masters) deliver every event once, in order.
func TestRelayWithLockPackage(t *testing.T) {
	rdb := newClient(t, redistest.MustStart(t).Addr())
	var masters []redis.UniversalClient
	for _, m := range redistest.MustStartN(t, 3) {
		masters = append(masters, m.Client())
	}
	const partitions = 8
	w := writeWorkload(t, rdb, DefaultPrefix, partitions, accountNames(16), 30)
	c := newOrderConsumer(t, rdb, "withlock")
	for _, owner := range []string{"relay-a", "relay-b"} {
		l, err := lock.New(masters, lock.Config{TTL: 2 * time.Second, WaitTimeout: 50 * time.Millisecond})
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() }) // after the relay stopped: cleanups run last-in first-out
		r, err := NewRelay(rdb, l, testConfig(t, partitions, owner, c))
		require.NoError(t, err)
		startRelay(t, r)
	}
	waitFor(t, 30*time.Second, func() bool { return c.effects(t, rdb, partitions) == int64(w.total) }, "all events applied")
	w.requireExactlyOnceInOrder(t, rdb, c)
}
