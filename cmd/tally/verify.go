package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/tally-ledger/tally/ledger"
)

// runVerify checks the ledger invariants on a Redis and prints a JSON report. It returns an
// error (exit status 1) when any invariant is violated.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		rf         redisFlags
		partitions int
		prefix     string
	)
	fs := newFlagSet("verify", stderr)
	rf.register(fs)
	fs.IntVar(&partitions, "partitions", 16, "partition count the ledger was started with")
	fs.StringVar(&prefix, "prefix", "tally", "key prefix")
	if err := parse(fs, args); err != nil {
		return err
	}
	rdb, closeRedis, err := rf.connect(ctx, slog.New(slog.NewTextHandler(stderr, nil)), false)
	if err != nil {
		return err
	}
	defer closeRedis()
	l, err := ledger.Open(ctx, rdb, ledger.Config{Prefix: prefix, Partitions: partitions})
	if err != nil {
		return err
	}
	rep, err := l.Verify(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("verify: %d invariant violations", len(rep.Problems))
	}
	return nil
}
