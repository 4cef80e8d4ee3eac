package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
)

// smokeStack is docker-compose.yml run as local processes: every redis-server service
// started with the service's own arguments on a free loopback port, every tally service
// with its own command line, service names rewritten to the loopback addresses.
type smokeStack struct {
	project *types.Project
	addrs   map[string]string // "service:port" of the compose network -> 127.0.0.1:port
	procs   map[string]*proc  // tally services
	owners  map[string]string // relay services -> the owner name they print
	redis   map[string]*redistest.Server
	cluster *redistest.Cluster
}

// startSmokeStack starts every service of p the smoke test can run locally. Redis Cluster
// nodes (redis-server --cluster-enabled yes) become one redistest.MustStartCluster, which
// does what the compose file's one-shot job does (redis-cli --cluster create, wait for
// cluster_state:ok); that job itself and Prometheus and Grafana (images only) are skipped.
func startSmokeStack(t *testing.T, bin string, p *types.Project) *smokeStack {
	s := &smokeStack{project: p, addrs: map[string]string{}, procs: map[string]*proc{}, owners: map[string]string{},
		redis: map[string]*redistest.Server{}}
	var clusterNodes []string
	for _, name := range p.ServiceNames() {
		svc := p.Services[name]
		port := redisPort(svc)
		switch {
		case port == 0:
			continue
		case redisArg(svc, "cluster-enabled") == "yes":
			clusterNodes = append(clusterNodes, name)
		default:
			srv := redistest.MustStart(t, redistest.WithArgs(svc.Command[1:]...))
			s.redis[name] = srv
			s.addrs[net.JoinHostPort(name, strconv.Itoa(port))] = srv.Addr()
		}
	}
	if len(clusterNodes) > 0 {
		require.Len(t, clusterNodes, 3, "redistest starts a 3-master cluster")
		sort.Strings(clusterNodes)
		s.cluster = redistest.MustStartCluster(t)
		for i, name := range clusterNodes {
			s.addrs[net.JoinHostPort(name, strconv.Itoa(redisPort(p.Services[name])))] = s.cluster.Nodes[i].Addr()
		}
	}
	for _, name := range p.ServiceNames() {
		svc := p.Services[name]
		if !isTally(svc) {
			continue
		}
		c, err := tallyCommand(svc)
		require.NoError(t, err, "service %s", name)
		args := s.localArgs(t, svc, c.args)
		t.Logf("%s: tally %s %s", name, c.name, strings.Join(args, " "))
		switch c.name {
		case "serve":
			pr, err := startServeProc(t, bin, args...)
			require.NoError(t, err, "service %s", name)
			s.procs[name] = pr
		case "relay":
			pr, owner, err := startRelayProcErr(t, bin, args...)
			require.NoError(t, err, "service %s", name)
			s.procs[name], s.owners[name] = pr, owner
			if _, port, err := net.SplitHostPort(c.metricsAddr()); err == nil {
				pr.base = "http://" + s.addrs[net.JoinHostPort(name, port)] // where its /metrics is
			}
		}
	}
	return s
}

// localArgs rewrites a tally service's flags for a local process: a wildcard listen address
// (0.0.0.0:port) becomes a free loopback port, recorded as the service's address; every
// service:port the stack started becomes its loopback address; a container path under a
// bind mount becomes the host path.
func (s *smokeStack) localArgs(t *testing.T, svc types.ServiceConfig, args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		name, value, hasValue := strings.Cut(a, "=")
		if !strings.HasPrefix(a, "-") {
			name, value, hasValue = "", a, true
		}
		if !hasValue {
			out[i] = a
			continue
		}
		if host, port, err := net.SplitHostPort(value); err == nil && (host == "0.0.0.0" || host == "" || host == "::") {
			local := freeAddr(t)
			s.addrs[net.JoinHostPort(svc.Name, port)] = local
			value = local
		} else if hp := hostPath(svc, value); strings.HasPrefix(value, "/") && hp != "" {
			value = hp
		} else {
			parts := strings.Split(value, ",")
			for j, p := range parts {
				if local, ok := s.addrs[p]; ok {
					parts[j] = local
				}
			}
			value = strings.Join(parts, ",")
		}
		if name == "" {
			out[i] = value
		} else {
			out[i] = name + "=" + value
		}
	}
	return out
}

// apiClient returns a typed client of a serve service, with the demo key the compose file
// mounts.
func (s *smokeStack) apiClient(t *testing.T, service string) *client.Client {
	p, ok := s.procs[service]
	require.True(t, ok, "service %s runs", service)
	c, err := client.New(p.base, client.WithAPIKey(demoToken), client.WithHTTPClient(&http.Client{Timeout: 30 * time.Second}))
	require.NoError(t, err)
	return c
}

// serveData returns a go-redis client of the data Redis a serve service uses (--redis or
// --redis-cluster), and its relay group.
func (s *smokeStack) serveData(t *testing.T, service string) (redis.UniversalClient, string) {
	c, err := tallyCommand(s.project.Services[service])
	require.NoError(t, err)
	require.NotNil(t, c.serve, "service %s runs serve", service)
	var rdb redis.UniversalClient
	if c.serve.redis.cluster != "" {
		rdb = s.cluster.Client()
	} else {
		rdb = redis.NewClient(&redis.Options{Addr: s.addrs[c.serve.redis.addr]})
		t.Cleanup(func() { rdb.Close() })
	}
	return rdb, c.serve.relay.group
}

// smokeResult is what a workload did, as its clients saw it.
type smokeResult struct {
	deposited int64
	transfers []string
}

// smokeWorkload opens accounts, deposits, and runs cross-partition transfers and holds
// (captured into another account, voided, left pending) through every client in turn, then
// waits for every transfer to complete. Every call must succeed (the amounts leave every
// balance positive); the first failure is returned. It runs off the test's goroutine.
func smokeWorkload(prefix string, clients []*client.Client) (smokeResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const accounts, deposit, workers, perWorker = 8, 10_000, 4, 20
	ids := make([]string, accounts)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		if _, err := clients[i%len(clients)].OpenAccount(ctx, client.OpenAccountRequest{ID: ids[i]}); err != nil {
			return smokeResult{}, fmt.Errorf("open %s: %w", ids[i], err)
		}
		if _, err := clients[(i+1)%len(clients)].Deposit(ctx, ids[i], "USD", deposit); err != nil {
			return smokeResult{}, fmt.Errorf("deposit to %s: %w", ids[i], err)
		}
	}
	res := smokeResult{deposited: accounts * deposit}
	var mu sync.Mutex
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			record := func(id string) {
				mu.Lock()
				res.transfers = append(res.transfers, id)
				mu.Unlock()
			}
			for i := range perWorker {
				c := clients[(w+i)%len(clients)]
				from, to := ids[rng.IntN(accounts)], ids[rng.IntN(accounts)]
				for to == from {
					to = ids[rng.IntN(accounts)]
				}
				tr, err := c.CreateTransfer(ctx, client.TransferRequest{From: from, To: to, Currency: "USD", Amount: int64(1 + rng.IntN(50))})
				if err != nil {
					errs[w] = fmt.Errorf("transfer %s -> %s: %w", from, to, err)
					return
				}
				record(tr.ID)
				if i%5 != 4 {
					continue
				}
				// A hold on the other replica's turn: captured into another account, voided or
				// left pending by turns.
				h, err := c.PlaceHold(ctx, from, client.HoldRequest{Currency: "USD", Amount: 20, TimeoutSeconds: 600})
				if err != nil {
					errs[w] = fmt.Errorf("hold on %s: %w", from, err)
					return
				}
				other := clients[(w+i+1)%len(clients)]
				switch i / 5 % 3 {
				case 0:
					if h, err = other.CaptureHold(ctx, from, h.ID, client.CaptureRequest{Amount: 15, To: to}); err == nil {
						record(h.TransferID)
					}
				case 1:
					_, err = other.VoidHold(ctx, from, h.ID)
				}
				if err != nil {
					errs[w] = fmt.Errorf("capture or void hold %s: %w", h.ID, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	// Every transfer arrives, read through another replica than most of its writes.
	for i, id := range res.transfers {
		tr, err := clients[(i+1)%len(clients)].WaitTransfer(ctx, id)
		if err != nil {
			return res, fmt.Errorf("transfer %s: %w", id, err)
		}
		if tr.Status != client.TransferCompleted {
			return res, fmt.Errorf("transfer %s is %s (%s), want completed", id, tr.Status, tr.Reason)
		}
	}
	return res, nil
}

// smokeInvariants waits until the ledger on rdb is quiet (no transfer in flight, every
// outbox entry acknowledged by the relay group), then requires Verify to be clean and money
// to be conserved: every deposit is still in the accounts (no withdrawals, captures go to
// accounts).
func smokeInvariants(t *testing.T, rdb redis.UniversalClient, group string, res smokeResult) ledger.VerifyReport {
	ctx := context.Background()
	l, err := ledger.Open(ctx, rdb, ledger.Config{})
	require.NoError(t, err)
	var rep ledger.VerifyReport
	require.Eventually(t, func() bool {
		rep, err = l.VerifyWith(ctx, ledger.VerifyOptions{Group: group})
		require.NoError(t, err)
		if rep.Pending > 0 {
			return false
		}
		for _, o := range rep.Outbox {
			if o.Backlog > 0 || (o.Length > 0 && !o.Consumed) {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "the relay delivers every outbox entry and every transfer finishes")
	require.True(t, rep.OK(), "%v", rep.Problems)
	require.Empty(t, rep.Warnings)
	want := big.NewInt(res.deposited)
	require.Zero(t, want.Cmp(rep.Deposits["USD"]), "deposits %v, want %v", rep.Deposits["USD"], want)
	require.Zero(t, want.Cmp(rep.Totals["USD"]), "posted balances %v, want every deposit %v", rep.Totals["USD"], want)
	require.Equal(t, len(res.transfers), rep.Transfers, "the ledger holds every transfer the clients made, and no other")
	return rep
}

// scrapeTargets returns Prometheus's targets (service:port) of the stack's services.
func scrapeTargets(t *testing.T, p *types.Project) []string {
	cfg, err := readPrometheus(p)
	require.NoError(t, err)
	var out []string
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			out = append(out, st.Targets...)
		}
	}
	return out
}

// TestSmoke runs docker-compose.yml's topology, every profile, as local processes (the
// redis-server arguments and tally command lines of the file, service names rewritten to
// loopback ports) and puts a workload through both serve replicas and through the Cluster
// ledger at the same time: deposits, transfers across partitions, holds. Then every transfer
// has completed, Verify is clean on both ledgers, money is conserved, the relay service
// (the only relay of the standalone ledger) owns and has delivered every partition, the
// event stream it feeds holds every event, each Prometheus target answers /metrics, and
// every process exits cleanly on SIGTERM. `make smoke` runs it; so does go test ./....
func TestSmoke(t *testing.T) {
	start := time.Now()
	p, err := loadCompose(repoRoot, "*")
	require.NoError(t, err)
	bin := buildTally(t)
	s := startSmokeStack(t, bin, p)
	t.Logf("stack up in %v (build included)", time.Since(start).Round(time.Millisecond))

	var serves []string
	for name := range s.procs {
		if _, relay := s.owners[name]; !relay {
			serves = append(serves, name)
		}
	}
	sort.Strings(serves)
	require.Equal(t, []string{"serve-1", "serve-2", "serve-cluster"}, serves)

	replicas := []*client.Client{s.apiClient(t, "serve-1"), s.apiClient(t, "serve-2")}
	clusterAPI := []*client.Client{s.apiClient(t, "serve-cluster")}
	var main, cluster smokeResult
	var mainErr, clusterErr error
	var wg sync.WaitGroup
	wg.Go(func() { main, mainErr = smokeWorkload("smoke", replicas) })
	wg.Go(func() { cluster, clusterErr = smokeWorkload("cluster", clusterAPI) })
	wg.Wait()
	require.NoError(t, mainErr, "workload through serve-1 and serve-2")
	require.NoError(t, clusterErr, "workload through serve-cluster")
	t.Logf("workload done after %v: %d transfers on the standalone ledger, %d on the cluster", time.Since(start).Round(time.Millisecond),
		len(main.transfers), len(cluster.transfers))

	t.Run("standalone", func(t *testing.T) {
		rdb, group := s.serveData(t, "serve-1")
		rep := smokeInvariants(t, rdb, group, main)
		// The relay service is the standalone ledger's only relay (the serves run none):
		// it owns every partition, and its --sink-stream holds every event once.
		parts, err := replicas[0].RelayStatus(context.Background())
		require.NoError(t, err)
		for _, ps := range parts {
			require.Equal(t, s.owners["relay"], ps.Owner, "partition %d", ps.Partition)
		}
		relay, err := tallyCommand(p.Services["relay"])
		require.NoError(t, err)
		n, err := rdb.XLen(context.Background(), relay.relay.relay.stream).Result()
		require.NoError(t, err)
		require.Equal(t, rep.Events, n, "the relay's sink stream has every event")
		// And the relay process delivered them all; the serves (--relay=false) none.
		require.Equal(t, float64(rep.Events), s.procs["relay"].metric(t, "tally_outbox_delivered_total"))
		for _, name := range []string{"serve-1", "serve-2"} {
			require.Zero(t, s.procs[name].metric(t, "tally_outbox_delivered_total"), name)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		rdb, group := s.serveData(t, "serve-cluster")
		smokeInvariants(t, rdb, group, cluster)
	})
	t.Run("metrics", func(t *testing.T) {
		for _, target := range scrapeTargets(t, p) {
			local, ok := s.addrs[target]
			require.True(t, ok, "Prometheus target %s is a service the stack runs", target)
			resp, err := http.Get("http://" + local + "/metrics")
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, target)
			require.Contains(t, string(body), "\ntally_", "target %s exports tally_* metrics", target)
		}
	})
	for _, name := range slices.Sorted(maps.Keys(s.procs)) {
		s.procs[name].stop(t)
	}
	t.Logf("smoke test took %v", time.Since(start).Round(time.Millisecond))
}
