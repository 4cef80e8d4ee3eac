package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

type serveFlags struct {
	addr        string
	redis       redisFlags
	lock        lockFlags
	relay       relayFlags
	runRelay    bool
	partitions  int
	concurrency string
	groupCommit bool
	maxBatch    int
	keysFile    string
	insecureAdm bool
	rateLimit   int
	rateBurst   int
	maxBody     int64
	log         logFlags
	shutdown    time.Duration
	idemTTL     time.Duration
	reqTimeout  time.Duration
	maxQueue    int
	snapCache   int
	stuckAfter  time.Duration
	pprof       string
}

// parseServe parses and checks serve's command line (and TALLY_* environment). The compose
// test parses docker-compose.yml's serve commands with it too.
func parseServe(args []string, stderr io.Writer) (*serveFlags, *slog.Logger, error) {
	f := &serveFlags{}
	fs := newFlagSet("serve", stderr)
	fs.StringVar(&f.addr, "addr", "127.0.0.1:8080", "HTTP listen address")
	f.redis.registerEmbedded(fs)
	f.lock.register(fs)
	f.relay.register(fs)
	fs.BoolVar(&f.runRelay, "relay", true, "run the outbox relay in this process")
	fs.IntVar(&f.partitions, "partitions", 16, "number of partitions (recorded in Redis on first start; must match later)")
	fs.StringVar(&f.concurrency, "concurrency", "optimistic", "concurrency mode: optimistic | lock")
	fs.BoolVar(&f.groupCommit, "group-commit", true, "commit requests that wait together in one partition (any accounts) in one read and one script call")
	fs.IntVar(&f.maxBatch, "max-batch", 64, "largest group commit (requests per partition per script call)")
	fs.StringVar(&f.keysFile, "api-keys-file", "", "JSON file of API keys (name, sha256 of the token, scopes, optional tenant prefix; docs/security.md), reloaded on SIGHUP; required on a non-loopback --addr")
	fs.BoolVar(&f.insecureAdm, "insecure-admin", false, "without --api-keys-file, allow admin operations (dead-letter replay) to every local client")
	fs.IntVar(&f.rateLimit, "rate-limit", 0, "requests per second each API key may sustain on /v1 (without --api-keys-file: all clients together); beyond: 429 with Retry-After (0: off)")
	fs.IntVar(&f.rateBurst, "rate-burst", 0, "requests a key may send at once after being idle (default: --rate-limit, one second's worth)")
	fs.Int64Var(&f.maxBody, "max-body", 1<<20, "request body limit in bytes")
	f.log.register(fs)
	fs.DurationVar(&f.shutdown, "shutdown-timeout", 10*time.Second, "graceful shutdown deadline")
	fs.DurationVar(&f.idemTTL, "idempotency-ttl", 24*time.Hour, "how long Idempotency-Keys are remembered")
	fs.IntVar(&f.maxQueue, "max-queue", 10_000, "requests of one account this process holds at once; beyond it: 503 overloaded")
	fs.IntVar(&f.snapCache, "snapshot-cache", ledger.DefaultSnapshotCache, "account snapshots remembered from this process's own commits, so that the next write of a hot account skips its read (0: off)")
	fs.DurationVar(&f.stuckAfter, "sweep-stuck-after", 30*time.Second, "a cross-partition transfer pending this long is logged, counted and finished by the sweep")
	fs.DurationVar(&f.reqTimeout, "request-timeout", handlers.DefaultRequestTimeout, "deadline of one API request; a request that outlives it is answered 503 with Retry-After")
	fs.StringVar(&f.pprof, "pprof", "", "serve Go's profiler (/debug/pprof/) on this separate loopback address, e.g. 127.0.0.1:6060 (default: off)")
	if err := parse(fs, args); err != nil {
		return nil, nil, err
	}
	// Every configuration is checked before anything starts: an invalid one fails here,
	// before the NOT DURABLE banner, the embedded Redis, a connection or a listener.
	log, err := f.log.logger(stderr)
	if err != nil {
		return nil, nil, err
	}
	if err := f.validate(); err != nil {
		return nil, nil, err
	}
	return f, log, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, log, err := parseServe(args, stderr)
	if err != nil {
		return err
	}
	hcfg := handlers.Config{MaxBodyBytes: f.maxBody, RequestTimeout: f.reqTimeout, Logger: log,
		InsecureAdmin: f.insecureAdm, RateLimit: handlers.RateLimit{PerSecond: f.rateLimit, Burst: f.rateBurst}}
	var g group
	if f.keysFile != "" {
		keys, err := loadKeys(f.keysFile)
		if err != nil {
			return err
		}
		hcfg.Keys = keys
		hup, stopHUP := notifyHUP()
		defer stopHUP()
		g.add(func(ctx context.Context) error { return reloadKeys(ctx, log, hup, f.keysFile, keys) })
	}
	if err := hcfg.Validate(); err != nil {
		return err
	}
	// Components are built on a client that reaches no server until data.start.
	data, err := f.redis.open(true)
	if err != nil {
		return err
	}
	defer data.close()
	rdb := data.client

	reg, hooks, err := newMetrics()
	if err != nil {
		return err
	}
	hcfg.Metrics, hcfg.Registerer = metricsHandler(reg), reg
	lcfg := ledger.Config{
		Partitions:         f.partitions,
		Mode:               ledger.Mode(f.concurrency),
		DisableGroupCommit: !f.groupCommit,
		MaxBatch:           f.maxBatch,
		MaxQueue:           f.maxQueue,
		SnapshotCache:      cmp.Or(f.snapCache, -1),
		IdempotencyTTL:     f.idemTTL,
		BatchTimeout:       groupCommitTimeout,
		Registerer:         reg,
	}
	if lcfg.Mode == ledger.ModeLock {
		locker, closeLocker, err := f.lock.newLocker(rdb, log, hooks, f.lock.ttl)
		if err != nil {
			return err
		}
		defer closeLocker()
		lcfg.Locker = locker
	}
	l, err := ledger.New(rdb, lcfg)
	if err != nil {
		return err
	}
	sweeper, err := l.NewSweeper(ledger.SweeperConfig{StuckAfter: f.stuckAfter, Logger: log})
	if err != nil {
		return err
	}
	g.add(sweeper.Run)
	// The relay status and dead-letter replay live in Redis: every serve answers them.
	admin, err := f.relay.newAdmin(rdb, l.Prefix(), l.Partitions(), reg)
	if err != nil {
		return err
	}
	hcfg.Relay = relayAdmin{admin}
	if f.runRelay {
		leaser, closeLeaser, err := f.lock.newLocker(rdb, log, hooks, f.relay.leaseTTL)
		if err != nil {
			return err
		}
		defer closeLeaser()
		relayRDB, closeRelayRDB := relayClient(rdb, l.Partitions())
		defer closeRelayRDB()
		relay, err := f.relay.newRelay(relayRDB, leaser, l.Prefix(), l.Partitions(), log, reg, l.TransferManager())
		if err != nil {
			return err
		}
		g.add(relay.Run)
	}

	if err := data.start(ctx, log); err != nil {
		return err
	}
	if lcfg.Locker != nil || f.runRelay {
		if err := f.lock.checkMasters(ctx, log); err != nil {
			return err
		}
	}
	if err := l.CheckPartitions(ctx); err != nil {
		return err
	}
	if err := registerLedgerMetrics(reg, l); err != nil {
		return err
	}
	api, err := handlers.New(l, hcfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return err
	}
	log.Info("tally serving", "addr", ln.Addr().String(), "concurrency", l.Mode(), "partitions", l.Partitions(),
		"group_commit", f.groupCommit, "relay", f.runRelay, "api_keys", hcfg.Keys.Len(), "rate_limit", f.rateLimit)
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())

	g.add(func(ctx context.Context) error {
		return serveHTTPTimeout(ctx, log, ln, api, f.shutdown, apiWriteTimeout(f.reqTimeout, groupCommitTimeout))
	})
	if f.pprof != "" {
		pln, err := net.Listen("tcp", f.pprof)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("--pprof: %w", err)
		}
		log.Info("profiler serving", "addr", pln.Addr().String(), "path", "/debug/pprof/")
		g.add(func(ctx context.Context) error {
			// A CPU profile takes 30s by default: allow the response that long and more.
			return serveHTTPTimeout(ctx, log, pln, profiler(), f.shutdown, 5*time.Minute)
		})
	}
	return g.run(ctx)
}

// profiler returns the handlers of net/http/pprof on their own mux (never on the API's).
func profiler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// groupCommitTimeout bounds one group commit (ledger.Config.BatchTimeout). A request that
// leads its account's group commit waits for it even past its own deadline.
const groupCommitTimeout = 10 * time.Second

// apiWriteTimeout is the API server's WriteTimeout when requests time out after
// requestTimeout and a group commit after batchTimeout: long enough that the answer of a
// request that ran out of time while leading a group commit is still written.
func apiWriteTimeout(requestTimeout, batchTimeout time.Duration) time.Duration {
	return requestTimeout + batchTimeout + 5*time.Second
}

// serveHTTP serves h on ln until ctx is cancelled, then shuts down gracefully. Responses
// must be written within 30s of their request's headers.
func serveHTTP(ctx context.Context, log *slog.Logger, ln net.Listener, h http.Handler, grace time.Duration) error {
	return serveHTTPTimeout(ctx, log, ln, h, grace, 30*time.Second)
}

// serveHTTPTimeout is serveHTTP with the given WriteTimeout: the time from the end of a
// request's headers to the end of its response.
func serveHTTPTimeout(ctx context.Context, log *slog.Logger, ln net.Listener, h http.Handler, grace, writeTimeout time.Duration) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
