package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

var listenLine = regexp.MustCompile(`listening on (http://\S+)`)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServe runs `serve` in-process and returns its base URL and a stop function that
// cancels it and returns run's error; the test's cleanup stops it too.
func startServe(tb testing.TB, args ...string) (string, func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...), &stdout, &stderr)
	}()
	var base string
	require.Eventually(tb, func() bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
		}
		if m := listenLine.FindStringSubmatch(stdout.String()); m != nil {
			base = m[1]
			return true
		}
		return false
	}, 15*time.Second, 10*time.Millisecond)
	require.NotEmpty(tb, base, "serve did not start: %s", stderr.String())
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(15 * time.Second):
			return fmt.Errorf("serve did not stop")
		}
	}
	tb.Cleanup(func() { _ = stop() })
	return base, stop
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeEmbedded(t *testing.T) {
	base, stop := startServe(t)
	code, body := post(t, base+"/v1/accounts", `{"id":"alice"}`)
	require.Equal(t, 201, code, body)
	code, body = post(t, base+"/v1/accounts/alice/deposits", `{"currency":"USD","amount":10}`)
	require.Equal(t, 201, code, body)
	resp, err := http.Get(base + "/v1/relay")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	resp, err = http.Get(base + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(metrics), "tally_ledger_operations_total 2")
	assert.Contains(t, string(metrics), `tally_http_requests_total{code="201",method="POST",route="/v1/accounts/:id/deposits"} 1`)
	require.NoError(t, stop(), "graceful shutdown returns nil")
}

// TestServeRefusals: a partition count that differs from the one recorded in Redis, and an
// unknown command. Invalid flags are TestServeConfigErrorsBeforeAnything's.
func TestServeRefusals(t *testing.T) {
	ctx := context.Background()
	srv := redistest.MustStart(t)
	_, stop := startServe(t, "--redis", srv.Addr(), "--partitions", "8", "--relay=false")
	require.NoError(t, stop())
	t.Setenv("TALLY_PARTITIONS", "16")
	err := run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--redis", srv.Addr()}, io.Discard, io.Discard)
	require.ErrorIs(t, err, ledger.ErrPartitionMismatch, "TALLY_PARTITIONS is read and checked against Redis")

	err = run(ctx, []string{"nope"}, io.Discard, io.Discard)
	require.Error(t, err)
}

// buildTally returns the tally binary, compiled once per test binary.
func buildTally(t *testing.T) string {
	t.Helper()
	return buildTallyTags(t)
}

// The binaries buildTallyTags compiled, by build tags, in binDir (TestMain removes it).
var (
	binDir   string
	binMu    sync.Mutex
	binBuilt = map[string]string{}
)

// buildTallyTags returns the tally binary built with tags (a deliberately broken build),
// compiled on the first call for those tags: a link takes seconds on a busy machine, and
// a dozen tests start the binary.
func buildTallyTags(t *testing.T, tags ...string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	key := strings.Join(tags, ",")
	if bin, ok := binBuilt[key]; ok {
		return bin
	}
	bin := filepath.Join(binDir, fmt.Sprintf("tally-%d", len(binBuilt)))
	args := []string{"build", "-o", bin}
	if key != "" {
		args = append(args, "-tags", key)
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	binBuilt[key] = bin
	return bin
}

// proc is a tally child process.
type proc struct {
	cmd    *exec.Cmd
	base   string
	logs   *syncBuffer
	exited chan struct{} // closed once the process was reaped
}

// startProc starts `tally serve` as a child process and waits until it listens.
func startProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p, err := startServeProc(t, bin, args...)
	require.NoError(t, err)
	return p
}

// startServeProc is startProc for callers that must not fail the test from their own
// goroutine (a nemesis restarting a process): it returns an error instead.
func startServeProc(tb testing.TB, bin string, args ...string) (*proc, error) {
	args = append([]string{"serve", "--addr", "127.0.0.1:0", "--log-level", "warn"}, args...)
	p, base, err := launch(tb, bin, args, func(line string) (string, bool) {
		if m := listenLine.FindStringSubmatch(line); m != nil {
			return m[1], true
		}
		return "", false
	})
	if p != nil {
		p.base = base
	}
	return p, err
}

// launch starts bin with args as a child process and waits (30s at most) until ready
// accepts a line of its stdout, returning what ready extracted from it. The process is
// killed when the test ends, and with the test binary should that die first. On error the
// process is killed and its logs are in the error.
func launch(tb testing.TB, bin string, args []string, ready func(line string) (string, bool)) (*proc, string, error) {
	cmd := exec.Command(bin, args...)
	// A test binary that dies (timeout, panic) takes its children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	p := &proc{cmd: cmd, logs: &syncBuffer{}}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	p.exited = exited
	tb.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if v, ok := ready(sc.Text()); ok {
				select {
				case found <- v:
				default:
				}
			}
		}
	}()
	select {
	case v := <-found:
		return p, v, nil
	case <-exited:
		return nil, "", fmt.Errorf("tally %s exited (%v): %s", args[0], waitErr, p.logs.String())
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return nil, "", fmt.Errorf("tally %s did not start within 30s: %s", args[0], p.logs.String())
	}
}

// kill SIGKILLs the process (also a stopped one) and waits until it is gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// stop sends SIGTERM and requires a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
		require.True(t, p.cmd.ProcessState.Success(), "graceful exit (%v); logs:\n%s", p.cmd.ProcessState, p.logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("tally did not stop on SIGTERM")
	}
}

// metric scrapes the process's /metrics and returns the sum of the samples of name (of
// every label set).
func (p *proc) metric(t *testing.T, name string) float64 {
	t.Helper()
	return scrapeAll(t, p.base+"/metrics").sum(name)
}

// TestTwoServeProcesses: two `tally serve` processes on different ports share one Redis and
// three lock masters; 64 HTTP clients hammer one hot account and a few others through both.
// There are no 5xx, nothing is lost or applied twice, and the DESIGN §10 invariants hold.
func TestTwoServeProcesses(t *testing.T) {
	bin := buildTally(t)
	for _, mode := range []string{"lock", "optimistic"} {
		t.Run(mode, func(t *testing.T) {
			data := redistest.MustStart(t)
			masters := redistest.MustStartN(t, 3)
			args := []string{"--redis", data.Addr(), "--concurrency", mode,
				"--lock-redis", strings.Join(redistest.Addrs(masters), ","), "--lock-wait", "20s"}
			procs := []*proc{startProc(t, bin, args...), startProc(t, bin, args...)}

			accounts := []string{"hot", "a1", "a2", "a3"}
			for _, a := range accounts {
				code, body := post(t, procs[0].base+"/v1/accounts", fmt.Sprintf(`{"id":%q}`, a))
				require.Equal(t, 201, code, body)
			}
			const clients, perClient = 64, 25
			var mu sync.Mutex
			acked := map[string]int64{}
			statuses := map[int]int{}
			var wg sync.WaitGroup
			httpc := &http.Client{Timeout: 30 * time.Second}
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := procs[c%2]
					for i := 0; i < perClient; i++ {
						acct := "hot"
						if i%4 == 3 {
							acct = accounts[1+i%3]
						}
						kind, sign := "deposits", int64(1)
						if i%3 == 2 {
							kind, sign = "withdrawals", -1
						}
						amount := int64(1 + (c*7+i)%50)
						resp, err := httpc.Post(fmt.Sprintf("%s/v1/accounts/%s/%s", p.base, acct, kind), "application/json",
							strings.NewReader(fmt.Sprintf(`{"currency":"USD","amount":%d}`, amount)))
						if !assert.NoError(t, err) {
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						mu.Lock()
						statuses[resp.StatusCode]++
						if resp.StatusCode == 201 {
							acked[acct] += sign * amount
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			t.Logf("%s mode statuses: %v", mode, statuses)
			for code, n := range statuses {
				assert.True(t, code == 201 || code == 422, "unexpected status %d (%d times)", code, n)
			}
			assert.Equal(t, clients*perClient, statuses[201]+statuses[422])

			for _, a := range accounts {
				resp, err := http.Get(procs[1].base + "/v1/accounts/" + a)
				require.NoError(t, err)
				var acc ledger.Account
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&acc))
				resp.Body.Close()
				assert.Equal(t, acked[a], acc.Balances["USD"].Posted, "account %s: balance equals acknowledged sum", a)
				assert.GreaterOrEqual(t, acc.Balances["USD"].Available, int64(0))
			}
			var conflicts, retries float64
			for _, p := range procs {
				conflicts += p.metric(t, "tally_ledger_version_conflicts_total")
				retries += p.metric(t, "tally_ledger_retries_total")
			}
			t.Logf("%s mode: %v version conflicts, %v retries across both processes", mode, conflicts, retries)
			for _, p := range procs {
				p.stop(t)
			}

			// Replay equals snapshot for every account, nothing negative.
			rdb := redis.NewClient(&redis.Options{Addr: data.Addr()})
			defer rdb.Close()
			l, err := ledger.Open(context.Background(), rdb, ledger.Config{})
			require.NoError(t, err)
			rep, err := l.Verify(context.Background())
			require.NoError(t, err)
			require.True(t, rep.OK(), "%v", rep.Problems)
			require.Equal(t, len(accounts), rep.Accounts)
		})
	}
}

func TestMain(m *testing.M) {
	// Children inherit the environment; make sure no TALLY_* setting leaks into them.
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TALLY_") {
			os.Unsetenv(strings.SplitN(kv, "=", 2)[0])
		}
	}
	var err error
	if binDir, err = os.MkdirTemp("", "tally-test-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// TestServePprof: --pprof serves Go's profiler on its own loopback listener, and the API
// listener does not serve it.
func TestServePprof(t *testing.T) {
	addr := freeAddr(t)
	base, stop := startServe(t, "--pprof", addr)

	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), "goroutine profile:")

	resp, err = http.Get(base + "/debug/pprof/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "the API must not expose the profiler")
	require.NoError(t, stop())
}

// TestDuplicateTransferIDsFromTwoServeProcesses: the same transfer IDs are sent at the same
// time through two `tally serve` processes (each copy with the same body, some across
// partitions, some within one). Every ID makes exactly one transfer: every answer for an ID
// names the same transfer, each source is debited once per ID, and the ledger verifies.
func TestDuplicateTransferIDsFromTwoServeProcesses(t *testing.T) {
	bin := buildTally(t)
	data := redistest.MustStart(t)
	args := []string{"--redis", data.Addr(), "--sweep-stuck-after", "2s"}
	procs := []*proc{startProc(t, bin, args...), startProc(t, bin, append(args, "--relay=false")...)}
	accounts := []string{"src", "dst", "g..src", "g..dst"} // the last two share a partition
	for _, a := range accounts {
		code, body := post(t, procs[0].base+"/v1/accounts", fmt.Sprintf(`{"id":%q}`, a))
		require.Equal(t, 201, code, body)
	}
	for _, a := range []string{"src", "g..src"} {
		code, body := post(t, procs[1].base+"/v1/accounts/"+a+"/deposits", `{"currency":"USD","amount":100000}`)
		require.Equal(t, 201, code, body)
	}
	const ids, copies = 20, 8
	type answer struct {
		code int
		id   string
	}
	answers := make([][]answer, ids)
	var mu sync.Mutex
	var wg sync.WaitGroup
	httpc := &http.Client{Timeout: 30 * time.Second}
	for i := range ids {
		from, to := "src", "dst"
		if i%2 == 1 {
			from, to = "g..src", "g..dst"
		}
		body := fmt.Sprintf(`{"id":"t%d","from":%q,"to":%q,"currency":"USD","amount":%d}`, i, from, to, 10+i)
		for c := range copies {
			wg.Go(func() {
				resp, err := httpc.Post(procs[c%2].base+"/v1/transfers", "application/json", strings.NewReader(body))
				if !assert.NoError(t, err) {
					return
				}
				defer resp.Body.Close()
				var tr ledger.Transfer
				assert.NoError(t, json.NewDecoder(resp.Body).Decode(&tr))
				mu.Lock()
				answers[i] = append(answers[i], answer{resp.StatusCode, tr.ID})
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	for i, as := range answers {
		require.Len(t, as, copies)
		for _, a := range as {
			assert.Contains(t, []int{201, 202}, a.code, "t%d", i)
			assert.Equal(t, fmt.Sprintf("t%d", i), a.id)
		}
	}

	rdb := redis.NewClient(&redis.Options{Addr: data.Addr()})
	defer rdb.Close()
	l, err := ledger.Open(context.Background(), rdb, ledger.Config{})
	require.NoError(t, err)
	var rep ledger.VerifyReport
	require.Eventually(t, func() bool { // cross-partition ones may still be on their way
		rep, err = l.Verify(context.Background())
		require.NoError(t, err)
		return rep.Pending == 0
	}, 20*time.Second, 50*time.Millisecond)
	require.True(t, rep.OK(), "%v", rep.Problems)
	assert.Equal(t, ids, rep.Transfers, "one transfer per ID")
	var wantSrc, wantG int64 = 100000, 100000
	for i := range ids {
		if i%2 == 1 {
			wantG -= int64(10 + i)
		} else {
			wantSrc -= int64(10 + i)
		}
	}
	for a, want := range map[string]int64{"src": wantSrc, "g..src": wantG, "dst": 100000 - wantSrc, "g..dst": 100000 - wantG} {
		acc, err := l.Account(context.Background(), a)
		require.NoError(t, err)
		assert.Equal(t, want, acc.Balances["USD"].Posted, "%s: each ID moved its amount once", a)
	}
	for _, p := range procs {
		p.stop(t)
	}
}
