package outbox

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// Environment of the helper relay process started by TestRelayProcessCrash.
const (
	helperEnvAddr       = "TALLY_OUTBOX_HELPER_REDIS"
	helperEnvPartitions = "TALLY_OUTBOX_HELPER_PARTITIONS"
	helperArmedKey      = "test:crash:armed"
	helperThreshold     = 300
	crashLeaseTTL       = time.Second
)

// TestHelperRelayProcess is not a test: TestRelayProcessCrash runs it in a child process
// (it returns at once otherwise). It runs a relay whose Dedup-backed sink, once 300 effects
// are committed, signals the parent and blocks before returning, so the batch it just
// applied is never acknowledged; the parent then kills the process with SIGKILL.
func TestHelperRelayProcess(t *testing.T) {
	addr := os.Getenv(helperEnvAddr)
	if addr == "" {
		return
	}
	partitions, err := strconv.Atoi(os.Getenv(helperEnvPartitions))
	require.NoError(t, err)
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 32})
	defer rdb.Close()
	c := newOrderConsumer(t, rdb, "crash")
	var applied atomic.Int64
	sink := funcSink(func(ctx context.Context, msgs []Message) error {
		if err := c.Deliver(ctx, msgs); err != nil {
			return err
		}
		if applied.Add(int64(len(msgs))) >= helperThreshold {
			// The effect is committed, the XACK has not happened: die here.
			if err := rdb.Set(ctx, helperArmedKey, "1", 0).Err(); err != nil {
				return err
			}
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	cfg := testConfig(t, partitions, "child", sink)
	cfg.BatchSize = 50
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r, err := NewRelay(rdb, &testLeaser{rdb: rdb, ttl: crashLeaseTTL, holder: "child"}, cfg)
	require.NoError(t, err)
	// The parent kills us long before this; the timeout only bounds an orphan.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = r.Run(ctx)
}

// lockedBuffer is a bytes.Buffer safe for a child's stdout and stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRelayProcessCrash: a relay in a separate OS process is killed with SIGKILL after its
// consumer committed effects it never acknowledged; a second relay takes the partitions
// over once the dead relay's leases expired, redelivers the dead owner's pending entries,
// and the Dedup-backed consumer applies every event exactly once, in order, recognising
// the redelivered ones as duplicates.
func TestRelayProcessCrash(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	rdb := newClient(t, srv.Addr())
	const partitions = 4
	w := writeWorkload(t, rdb, DefaultPrefix, partitions, accountNames(20), 100)

	var out lockedBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRelayProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnvAddr+"="+srv.Addr(), helperEnvPartitions+"="+strconv.Itoa(partitions))
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	waitFor(t, 30*time.Second, func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("helper relay exited early (%v):\n%s", err, out.String())
		default:
		}
		n, err := rdb.Exists(ctx, helperArmedKey).Result()
		require.NoError(t, err)
		return n == 1
	}, "the child committed effects it has not acknowledged")
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	killedAt := time.Now()
	err := <-exited
	exited <- err
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "child killed: %v", err)
	t.Logf("child output (tail):\n%s", tail(out.String(), 1500))

	c := newOrderConsumer(t, rdb, "crash")
	heldByChild := map[int]bool{}
	var pending int64
	for p := 0; p < partitions; p++ {
		owner, err := rdb.Get(ctx, fmtOwnerKey(p)).Result()
		if err == nil && owner == "child" {
			heldByChild[p] = true
		}
		sum, err := rdb.XPending(ctx, StreamKey(DefaultPrefix, p), DefaultGroup).Result()
		if err == nil {
			pending += sum.Consumers["child"]
		}
	}
	before := c.effects(t, rdb, partitions)
	t.Logf("after the kill: %d effects applied, %d entries pending under the dead relay, partitions held %v",
		before, pending, heldByChild)
	require.Positive(t, pending)
	require.Less(t, before, int64(w.total))
	require.NotEmpty(t, heldByChild)

	hist := &leaseHistory{}
	r, err := NewRelay(rdb, &testLeaser{rdb: rdb, ttl: crashLeaseTTL, holder: "parent", hist: hist},
		testConfig(t, partitions, "parent", c))
	require.NoError(t, err)
	startRelay(t, r)
	waitDelivered(t, r)
	w.requireExactlyOnceInOrder(t, rdb, c)
	st := c.d.Stats()
	t.Logf("takeover: dedup stats %+v", st)
	require.Positive(t, st.Duplicates, "entries whose effect committed before the crash were redelivered and deduplicated")
	require.Equal(t, int64(w.total)-before, st.Applied)

	first := map[string]time.Time{}
	for _, iv := range hist.snapshot() {
		if f, ok := first[iv.key]; !ok || iv.from.Before(f) {
			first[iv.key] = iv.from
		}
	}
	for p := range heldByChild {
		at, ok := first[r.leaseKey(p)]
		require.True(t, ok)
		require.GreaterOrEqual(t, at.Sub(killedAt), crashLeaseTTL/2,
			"partition %d was taken over only after the dead relay's lease expired", p)
	}
}

func fmtOwnerKey(p int) string {
	a := &Admin{cfg: AdminConfig{Prefix: DefaultPrefix, Group: DefaultGroup}}
	return a.ownerKey(p)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
