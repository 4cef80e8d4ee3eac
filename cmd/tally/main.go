// Command tally runs the Tally consistency coordinator.
//
//	tally serve   HTTP API (+ in-process outbox relay)
//	tally relay   standalone outbox relay
//	tally bench   compare concurrency modes on real Redis
//	tally verify  check ledger invariants on a Redis
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(1)
	}
}

const usage = `usage: tally <command> [flags]

commands:
  serve    run the HTTP API (embedded in-memory Redis when no --redis/--redis-cluster is given)
  relay    run a standalone outbox relay
  bench    benchmark concurrency modes against Redis
  verify   check ledger invariants (replay = snapshot, conservation) on a Redis

Run 'tally <command> -h' for its flags. Every flag can also be set as TALLY_<FLAG>
(upper case, dashes as underscores), e.g. TALLY_REDIS=127.0.0.1:6379.
`

// run executes the subcommand named by args[0]. It returns when the command ends or ctx is
// cancelled (SIGINT/SIGTERM).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "relay":
		return runRelay(ctx, args[1:], stdout, stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "verify":
		return runVerify(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
