// Command tally runs the Tally consistency coordinator.
//
//	tally serve    HTTP API (+ in-process outbox relay); embedded, NOT durable Redis without --redis/--redis-cluster
//	tally relay    standalone outbox relay (requires --redis or --redis-cluster)
//	tally bench    load test of the library (embedded Redis without --redis) or of a running serve (--target)
//	tally verify   check ledger invariants on a Redis (requires --redis or --redis-cluster)
//	tally version  print the module version and VCS revision (also tally --version)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "serve" || os.Args[1] == "relay") {
		gcDefaults(os.Getenv)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(1)
	}
}

// Garbage collector defaults of the long-running commands (docs/benchmarks.md, "Issue 9,
// step 4"): the write path allocates per request, and at Go's default (GOGC=100) the
// collector took about a tenth of serve's CPU. GOGC=400 gave 3-9 % more throughput for
// about 35 MB more RSS (80 MB under the benchmark load, against a budget of 150 MB); the
// soft limit keeps the heap from growing past 256 MiB when the live heap is large, where
// the collector then works harder instead. GOGC and GOMEMLIMIT, when set, win.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 256 << 20
)

// gcDefaults applies the defaults above, each unless its environment variable is set.
func gcDefaults(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}

const usage = `usage: tally <command> [flags]
       tally --version

commands:
  serve    run the HTTP API; with neither --redis nor --redis-cluster it uses an embedded
           in-memory Redis and nothing is durable
  relay    run a standalone outbox relay (requires --redis or --redis-cluster)
  bench    load test: the ledger library on a Redis (embedded without --redis or
           --redis-cluster) or a running serve (--target); checks every run's correctness
  verify   audit a (live) ledger: replay = snapshot, conservation, holds, transfers,
           outbox progress; exit 1 on violations (requires --redis or --redis-cluster)
  version  print the version and VCS revision of this binary

Run 'tally <command> -h' for its flags. Every flag can also be set as TALLY_<FLAG>
(upper case, dashes as underscores), e.g. TALLY_REDIS=127.0.0.1:6379.
`

// commandUsage is the head of 'tally <command> -h': a synopsis that shows which flags the
// command requires, and what it does.
func commandUsage(name string) string {
	const required = "(--redis host:port | --redis-cluster host:port,...)"
	switch name {
	case "serve":
		return "usage: tally serve [--redis host:port | --redis-cluster host:port,...] [flags]\n\n" +
			"Runs the HTTP API and, unless --relay=false, an outbox relay. Without --redis or\n" +
			"--redis-cluster it starts an embedded in-memory Redis: NOT durable, for trying Tally out.\n"
	case "relay":
		return "usage: tally relay " + required + " [flags]\n\n" +
			"Runs a standalone outbox relay. --redis or --redis-cluster is required.\n"
	case "bench":
		return "usage: tally bench [--redis host:port | --redis-cluster host:port,... | --target http://host:port] [flags]\n\n" +
			"Load test of the ledger library (an embedded Redis without --redis) or of a running serve.\n"
	case "verify":
		return "usage: tally verify " + required + " [flags]\n\n" +
			"Audits the ledger on a Redis, also while it takes traffic, and prints a summary\n" +
			"(--json: the JSON report). Exit status 1 when an invariant is violated.\n" +
			"--redis or --redis-cluster is required.\n"
	}
	return "usage: tally " + name + " [flags]\n"
}

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
	case "version", "--version", "-version":
		if len(args) > 1 {
			return fmt.Errorf("%s takes no arguments", args[0])
		}
		fmt.Fprintln(stdout, version(debug.ReadBuildInfo()))
		return nil
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// version describes the binary from the build information the Go toolchain embeds: the main
// module's version (a tag or pseudo-version, or "(devel)" when VCS stamping was off), the
// VCS revision and commit time, "modified" for a build from a dirty tree, and the Go
// version. ok false (a binary without build information) yields "tally (unknown version)".
func version(info *debug.BuildInfo, ok bool) string {
	if !ok || info == nil {
		return "tally (unknown version)"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var vcs []string
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		vcs = append(vcs, "revision "+rev)
	}
	if t := settings["vcs.time"]; t != "" {
		vcs = append(vcs, t)
	}
	if settings["vcs.modified"] == "true" {
		vcs = append(vcs, "modified")
	}
	out := "tally " + v
	if len(vcs) > 0 {
		out += " (" + strings.Join(vcs, ", ") + ")"
	}
	if info.GoVersion != "" {
		out += " " + info.GoVersion
	}
	return out
}
