package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// runRelay runs a standalone outbox relay. Relays (standalone or inside serve) with the
// same --relay-group share the partitions: one owner each, taken over through leases when
// an owner dies.
func runRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		rf          redisFlags
		lf          lockFlags
		relayF      relayFlags
		partitions  int
		prefix      string
		metricsAddr string
		logLevel    string
	)
	fs := newFlagSet("relay", stderr)
	rf.register(fs)
	lf.register(fs)
	relayF.register(fs)
	fs.IntVar(&partitions, "partitions", 16, "partition count (must match the ledger's)")
	fs.StringVar(&prefix, "prefix", "tally", "key prefix")
	fs.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9090)")
	fs.StringVar(&logLevel, "log-level", "info", "debug | info | warn | error")
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, logLevel)
	if err != nil {
		return err
	}
	rdb, closeRedis, err := rf.connect(ctx, log, false)
	if err != nil {
		return err
	}
	defer closeRedis()
	// Opening the ledger checks the partition count recorded in Redis; the relay's transfer
	// process manager writes through it.
	l, err := ledger.Open(ctx, rdb, ledger.Config{Prefix: prefix, Partitions: partitions})
	if err != nil {
		return err
	}
	reg, hooks, err := newMetrics()
	if err != nil {
		return err
	}
	leaser, closeLeaser, err := lf.newLocker(rdb, log, hooks, relayF.leaseTTL)
	if err != nil {
		return err
	}
	if err := lf.checkMasters(ctx, log); err != nil {
		closeLeaser()
		return err
	}
	defer closeLeaser()
	// The partitions' backlog, read from Redis when /metrics is scraped.
	if _, err := relayF.newAdmin(rdb, prefix, partitions, reg); err != nil {
		return err
	}
	relayRDB, closeRelayRDB := relayClient(rdb, partitions)
	defer closeRelayRDB()
	relay, err := relayF.newRelay(relayRDB, leaser, prefix, partitions, log, reg, l.TransferManager())
	if err != nil {
		return err
	}
	var g group
	g.add(relay.Run)
	if metricsAddr != "" {
		if !isLoopback(metricsAddr) {
			log.Warn("metrics are served without authentication", "addr", metricsAddr)
		}
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metricsHandler(reg))
		g.add(func(ctx context.Context) error { return serveHTTP(ctx, log, ln, mux, 5*time.Second) })
	}
	log.Info("tally relay running", "owner", relay.Owner(), "partitions", partitions, "group", relayF.group)
	fmt.Fprintf(stdout, "relay %s running\n", relay.Owner())
	return g.run(ctx)
}
