package outbox

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/backoff"
)

// errTestBusy is what testLeaser returns when the key is held by someone else: like
// lock.NotAcquiredError, it says so with a Busy method.
var errTestBusy = busyError{}

type busyError struct{}

func (busyError) Error() string { return "test leaser: held by another holder" }
func (busyError) Busy() bool    { return true }

// testLeaser is a minimal Leaser on the data Redis itself (any backend: standalone,
// Cluster, miniredis): SET NX PX to acquire (one attempt), a renewal loop that extends only
// its own token and cancels fn's ctx when that fails, compare-and-delete to release. It
// records every lease it held in hist, for the tests that check one owner at a time. The
// relay over package lock is tested in lockintegration_test.go and quiet_test.go.
type testLeaser struct {
	rdb    redis.UniversalClient
	ttl    time.Duration
	holder string
	hist   *leaseHistory
}

var (
	extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
)

func (l *testLeaser) TryDo(ctx context.Context, key string, fn func(ctx context.Context) error) error {
	var b [8]byte
	_, _ = crand.Read(b[:])
	token := hex.EncodeToString(b[:])
	ok, err := l.rdb.SetNX(ctx, key, token, l.ttl).Result()
	if err != nil {
		return fmt.Errorf("test leaser: %w", err)
	}
	if !ok {
		return errTestBusy
	}
	iv := l.hist.begin(key, l.holder)
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for backoff.Wait(lctx, l.ttl/3) == nil {
			n, err := extendScript.Run(lctx, l.rdb, []string{key}, token, l.ttl.Milliseconds()).Int()
			if lctx.Err() != nil {
				return
			}
			if err != nil || n == 0 {
				l.hist.lost(iv)
				cancel()
				return
			}
		}
	}()
	err = fn(lctx)
	l.hist.end(iv)
	cancel()
	wg.Wait()
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer rcancel()
	_ = releaseScript.Run(rctx, l.rdb, []string{key}, token).Err()
	return err
}

// leaseInterval is one lease held: from acquisition to the end of fn.
type leaseInterval struct {
	key, holder string
	from, to    time.Time
	lost        bool
}

type leaseHistory struct {
	mu  sync.Mutex
	ivs []leaseInterval
}

func (h *leaseHistory) begin(key, holder string) int {
	if h == nil {
		return -1
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ivs = append(h.ivs, leaseInterval{key: key, holder: holder, from: time.Now()})
	return len(h.ivs) - 1
}

func (h *leaseHistory) end(i int) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ivs[i].to = time.Now()
}

func (h *leaseHistory) lost(i int) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ivs[i].lost = true
}

func (h *leaseHistory) snapshot() []leaseInterval {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]leaseInterval(nil), h.ivs...)
}

// funcSink is the test sink: a func-backed Sink.
type funcSink func(ctx context.Context, msgs []Message) error

func (f funcSink) Deliver(ctx context.Context, msgs []Message) error { return f(ctx, msgs) }

// orderEffect appends the event's version to a per-account list and counts the effects of
// the partition: the list is exactly 1..n when every event took effect once and in order.
var orderEffect = NewEffect(`
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
return 1`)

// orderConsumer is a Dedup-backed consumer whose effect (orderEffect) lives in Redis.
type orderConsumer struct {
	d *Dedup
}

func newOrderConsumer(t testing.TB, rdb redis.UniversalClient, name string) *orderConsumer {
	t.Helper()
	d, err := NewDedup(rdb, DedupConfig{Name: name})
	require.NoError(t, err)
	return &orderConsumer{d: d}
}

func (c *orderConsumer) ops(msgs []Message) []Op {
	ops := make([]Op, len(msgs))
	for i, m := range msgs {
		ops[i] = Op{Msg: m, Keys: []string{c.d.Key(m.Partition, "order:"+m.Key), c.d.Key(m.Partition, "effects")},
			Args: []any{m.Seq}}
	}
	return ops
}

func (c *orderConsumer) Deliver(ctx context.Context, msgs []Message) error {
	_, err := c.d.ApplyBatch(ctx, orderEffect, c.ops(msgs))
	return err
}

// versions returns the versions the consumer's effect recorded for account, in order.
func (c *orderConsumer) versions(t testing.TB, rdb redis.UniversalClient, p int, account string) []int64 {
	t.Helper()
	vs, err := rdb.LRange(context.Background(), c.d.Key(p, "order:"+account), 0, -1).Result()
	require.NoError(t, err)
	out := make([]int64, len(vs))
	for i, v := range vs {
		out[i], err = strconv.ParseInt(v, 10, 64)
		require.NoError(t, err)
	}
	return out
}

// effects returns how many effects the consumer applied in partitions 0..P-1.
func (c *orderConsumer) effects(t testing.TB, rdb redis.UniversalClient, partitions int) int64 {
	t.Helper()
	var n int64
	for p := 0; p < partitions; p++ {
		v, err := rdb.Get(context.Background(), c.d.Key(p, "effects")).Int64()
		if errors.Is(err, redis.Nil) {
			continue
		}
		require.NoError(t, err)
		n += v
	}
	return n
}

// partitionOf maps an account to a partition (the tests' stand-in for the ledger's hash).
func partitionOf(account string, partitions int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(account))
	return int(h.Sum32() % uint32(partitions))
}

// workload is a set of messages written to the outbox streams.
type workload struct {
	partitions int
	counts     map[string]int64 // events per account
	total      int
}

// accountNames returns n account IDs.
func accountNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("acct-%03d", i)
	}
	return out
}

// testPayload is the payload the tests' producer writes. It is shaped like a ledger event,
// which the outbox itself never decodes, and carries the message ID as "id" so that webhook
// receivers can deduplicate batches.
type testPayload struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Account string          `json:"account"`
	Version int64           `json:"version"`
	Time    time.Time       `json:"time"`
	Data    json.RawMessage `json:"data"`
}

// newTestMessage returns the message of key's sequence number seq with a testPayload of
// type typ, time at and data (valid JSON). Partition and StreamID are left zero.
func newTestMessage(key string, seq int64, typ string, at time.Time, data string) Message {
	id := MessageID(key, seq)
	payload, err := json.Marshal(testPayload{ID: id, Type: typ, Account: key, Version: seq, Time: at, Data: json.RawMessage(data)})
	if err != nil {
		panic(fmt.Sprintf("test payload of %s: %v", id, err)) // a bug in the test's data
	}
	return Message{ID: id, Key: key, Seq: seq, Type: typ, Payload: payload}
}

// testPayloadOf decodes a testPayload or fails the test.
func testPayloadOf(t testing.TB, payload []byte) testPayload {
	t.Helper()
	var p testPayload
	require.NoError(t, json.Unmarshal(payload, &p))
	return p
}

// testEvent builds the message of a Deposited-like payload of account's version v
// (AccountOpened-like for v = 1).
func testEvent(account string, v int64) Message {
	typ, data := "Deposited", fmt.Sprintf(`{"operation_id":"op-%s-%d","currency":"USD","amount":%d}`, account, v, v)
	if v == 1 {
		typ, data = "AccountOpened", `{"allow_negative":false,"metadata":{}}`
	}
	return newTestMessage(account, v, typ, time.Now().UTC(), data)
}

// xaddEvents appends the messages' entries to their partitions' outbox streams (pipelined)
// and returns the stream IDs in order.
func xaddEvents(t testing.TB, rdb redis.UniversalClient, prefix string, partitions int, msgs []Message) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for start := 0; start < len(msgs); start += 500 {
		pipe := rdb.Pipeline()
		var cmds []*redis.StringCmd
		for _, m := range msgs[start:min(start+500, len(msgs))] {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: StreamKey(prefix, partitionOf(m.Key, partitions)),
				Values: EntryFields(m),
			}))
		}
		_, err := pipe.Exec(ctx)
		require.NoError(t, err)
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	return ids
}

// writeWorkload writes perAccount events (versions 1..n) for each account, interleaving
// accounts randomly while keeping each account's versions in order.
func writeWorkload(t testing.TB, rdb redis.UniversalClient, prefix string, partitions int, accounts []string, perAccount int) *workload {
	t.Helper()
	w := &workload{partitions: partitions, counts: map[string]int64{}}
	var evs []Message
	next := map[string]int64{}
	remaining := append([]string(nil), accounts...)
	for len(remaining) > 0 {
		i := rand.IntN(len(remaining))
		a := remaining[i]
		next[a]++
		evs = append(evs, testEvent(a, next[a]))
		if next[a] == int64(perAccount) {
			remaining = append(remaining[:i], remaining[i+1:]...)
		}
	}
	xaddEvents(t, rdb, prefix, partitions, evs)
	for _, a := range accounts {
		w.counts[a] = int64(perAccount)
	}
	w.total = len(evs)
	return w
}

// requireExactlyOnceInOrder checks that c's effect recorded versions 1..n for every account.
func (w *workload) requireExactlyOnceInOrder(t testing.TB, rdb redis.UniversalClient, c *orderConsumer) {
	t.Helper()
	accounts := make([]string, 0, len(w.counts))
	for a := range w.counts {
		accounts = append(accounts, a)
	}
	sort.Strings(accounts)
	for _, a := range accounts {
		vs := c.versions(t, rdb, partitionOf(a, w.partitions), a)
		want := make([]int64, w.counts[a])
		for i := range want {
			want[i] = int64(i + 1)
		}
		require.Equal(t, want, vs, "account %s: effects must be versions 1..n, once each, in order", a)
	}
	require.Equal(t, int64(w.total), c.effects(t, rdb, w.partitions))
}

// waitFor polls cond until it holds or timeout passes (then it fails the test with msg).
func waitFor(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", timeout, fmt.Sprintf(msg, args...))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitDelivered waits until r's group has no backlog in any partition.
func waitDelivered(t *testing.T, r *Relay) {
	t.Helper()
	waitFor(t, 30*time.Second, func() bool {
		sts, err := r.Status(context.Background())
		require.NoError(t, err)
		for _, st := range sts {
			if st.Backlog != 0 {
				return false
			}
		}
		return true
	}, "group %s delivered everything", r.cfg.Group)
}

// testConfig returns a relay config with short intervals for tests.
func testConfig(t testing.TB, partitions int, owner string, sinks ...Sink) Config {
	return Config{
		Partitions:      partitions,
		Owner:           owner,
		Sinks:           sinks,
		PollInterval:    5 * time.Millisecond,
		RetryBackoff:    5 * time.Millisecond,
		MaxRetryBackoff: 50 * time.Millisecond,
		BlockTimeout:    100 * time.Millisecond,
		LeaseRetry:      100 * time.Millisecond,
		OwnerTTL:        time.Second,
		Logger:          testLogger(t),
	}
}

// newTestLeaser returns a leaser with a 2s TTL.
func newTestLeaser(rdb redis.UniversalClient, holder string, hist *leaseHistory) *testLeaser {
	return &testLeaser{rdb: rdb, ttl: 2 * time.Second, holder: holder, hist: hist}
}

// startRelay runs r until the returned stop is called (or the test ends) and checks that
// Run returns promptly with nil.
func startRelay(t testing.TB, r *Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay %s: Run returned %v", r.Owner(), err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("relay %s did not stop within 10s", r.Owner())
		}
	})
	t.Cleanup(stop)
	return stop
}

// testLogger sends warnings and errors to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

var _ io.Writer = tWriter{}

// newClient returns a client with a pool large enough for several relays.
func newClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 64})
	t.Cleanup(func() { c.Close() })
	return c
}
