package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// relayCmdFlags are the flags of the relay command.
type relayCmdFlags struct {
	redis       redisFlags
	lock        lockFlags
	relay       relayFlags
	partitions  int
	prefix      string
	metricsAddr string
	log         logFlags
}

// parseRelay parses and checks relay's command line (and TALLY_* environment) before
// anything connects. The compose test parses docker-compose.yml's relay commands with it too.
func parseRelay(args []string, stderr io.Writer) (*relayCmdFlags, *slog.Logger, error) {
	f := &relayCmdFlags{}
	fs := newFlagSet("relay", stderr)
	f.redis.register(fs)
	f.lock.register(fs)
	f.relay.register(fs)
	fs.IntVar(&f.partitions, "partitions", 16, "partition count (must match the ledger's)")
	fs.StringVar(&f.prefix, "prefix", "tally", "key prefix")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9090)")
	f.log.register(fs)
	if err := parse(fs, args); err != nil {
		return nil, nil, err
	}
	log, err := f.log.logger(stderr)
	if err != nil {
		return nil, nil, err
	}
	if err := f.redis.check(false); err != nil {
		return nil, nil, err
	}
	if _, err := f.lock.masterOptions(); err != nil {
		return nil, nil, err
	}
	if err := f.relay.checkSinks(); err != nil {
		return nil, nil, err
	}
	if err := f.relay.checkLinger(); err != nil {
		return nil, nil, err
	}
	return f, log, nil
}

// runRelay runs a standalone outbox relay. Relays (standalone or inside serve) with the
// same --relay-group share the partitions: one owner each, taken over through leases when
// an owner dies.
func runRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, log, err := parseRelay(args, stderr)
	if err != nil {
		return err
	}
	rdb, closeRedis, err := f.redis.connect(ctx, log, false)
	if err != nil {
		return err
	}
	defer closeRedis()
	reg, hooks, err := newMetrics()
	if err != nil {
		return err
	}
	// Opening the ledger checks the partition count recorded in Redis; the relay's transfer
	// process manager writes through it (its commits are in the ledger's metrics).
	l, err := ledger.Open(ctx, rdb, ledger.Config{Prefix: f.prefix, Partitions: f.partitions, Registerer: reg})
	if err != nil {
		return err
	}
	if err := registerLedgerMetrics(reg, l); err != nil {
		return err
	}
	leaser, closeLeaser, err := f.lock.newLocker(rdb, log, hooks, f.relay.leaseTTL)
	if err != nil {
		return err
	}
	if err := f.lock.checkMasters(ctx, log); err != nil {
		closeLeaser()
		return err
	}
	defer closeLeaser()
	// The partitions' backlog, read from Redis when /metrics is scraped.
	if _, err := f.relay.newAdmin(rdb, f.prefix, f.partitions, reg); err != nil {
		return err
	}
	relayRDB, closeRelayRDB := relayClient(rdb, f.partitions)
	defer closeRelayRDB()
	relay, err := f.relay.newRelay(relayRDB, leaser, f.prefix, f.partitions, log, reg, l.TransferManager())
	if err != nil {
		return err
	}
	var g group
	g.add(relay.Run)
	if f.metricsAddr != "" {
		if !isLoopback(f.metricsAddr) {
			log.Warn("metrics are served without authentication", "addr", f.metricsAddr)
		}
		ln, err := net.Listen("tcp", f.metricsAddr)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metricsHandler(reg))
		g.add(func(ctx context.Context) error { return serveHTTP(ctx, log, ln, mux, 5*time.Second) })
	}
	log.Info("tally relay running", "owner", relay.Owner(), "partitions", f.partitions, "group", f.relay.group)
	fmt.Fprintf(stdout, "relay %s running\n", relay.Owner())
	return g.run(ctx)
}
