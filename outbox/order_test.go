package outbox

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// TestRelayKeepsKeyOrderWhenAReadWentElsewhere: entries of a partition can land in a
// consumer's pending list without the owner delivering them — the reply of the owner's own
// read lost on a cut connection (go-redis then retries the read, which returns the next
// entries), or a read an earlier owner left blocked in Redis that is served after the
// owner changed. The owner must deliver them before anything newer of the partition, not
// after (the chaos test saw versions of one account out of order both ways). Idle (waiting
// in a blocking read), the owner finds the newer entries with that read; busy (still
// delivering version 1), with a non-blocking one: both must check.
func TestRelayKeepsKeyOrderWhenAReadWentElsewhere(t *testing.T) {
	for _, reader := range []string{"r1", "earlier-owner"} {
		for _, busy := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/busy=%v", reader, busy), func(t *testing.T) { relayKeepsKeyOrder(t, reader, busy) })
		}
	}
}

func relayKeepsKeyOrder(t *testing.T, reader string, busy bool) {
	srv := redistest.MustStart(t)
	rdb := newClient(t, srv.Addr())
	ctx := context.Background()

	var (
		mu      sync.Mutex
		seqs    []int64
		once    sync.Once
		entered = make(chan struct{})
		release = make(chan struct{})
	)
	sink := funcSink(func(_ context.Context, msgs []Message) error {
		if busy {
			once.Do(func() { close(entered); <-release }) // hold the first delivery
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			seqs = append(seqs, m.Seq)
		}
		return nil
	})
	delivered := func() []int64 {
		mu.Lock()
		defer mu.Unlock()
		return append([]int64(nil), seqs...)
	}
	cfg := testConfig(t, 1, "r1", sink)
	r, err := NewRelay(rdb, newTestLeaser(rdb, "r1", nil), cfg)
	require.NoError(t, err)
	startRelay(t, r)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the relay stops (cleanups run last first): never left holding

	xaddEvents(t, rdb, r.cfg.Prefix, 1, []Message{testEvent("a", 1)})
	if busy {
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("version 1 never reached the sink")
		}
	} else {
		waitFor(t, 10e9, func() bool { return len(delivered()) == 1 }, "version 1 delivered")
		waitFor(t, 10e9, func() bool {
			clients, err := rdb.ClientList(ctx).Result()
			return err == nil && blockedRead.MatchString(clients)
		}, "the relay waits in a blocking read")
	}

	// Versions 2-4 are appended and read by reader in one transaction, so the relay never
	// reads them itself; then versions 5-6 are appended normally.
	stream := StreamKey(r.cfg.Prefix, 0)
	_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for v := int64(2); v <= 4; v++ {
			p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: EntryFields(testEvent("a", v))})
		}
		p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: r.cfg.Group, Consumer: reader,
			Streams: []string{stream, ">"}, Count: 10, Block: -1})
		return nil
	})
	require.NoError(t, err)
	xaddEvents(t, rdb, r.cfg.Prefix, 1, []Message{testEvent("a", 5), testEvent("a", 6)})
	releaseOnce()

	waitFor(t, 10e9, func() bool { return len(delivered()) >= 6 }, "versions 1-6 delivered (got %v)", delivered())
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6}, delivered(), "in version order, each once")
}

// blockedRead matches a CLIENT LIST line of a client blocked in XREADGROUP.
var blockedRead = regexp.MustCompile(`(?m)flags=\w*b\w* .*cmd=xreadgroup`)
