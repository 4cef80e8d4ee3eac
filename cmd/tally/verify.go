package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// runVerify audits the ledger on a Redis and prints the report: a summary for people by
// default, the JSON report with --json (for scripts and monitoring). It returns an error
// (exit status 1) when an invariant is violated, and with --strict also on warnings.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		rf         redisFlags
		partitions int
		prefix     string
		asJSON     bool
		strict     bool
		consumers  string
		opts       ledger.VerifyOptions
	)
	fs := newFlagSet("verify", stderr)
	rf.register(fs)
	fs.IntVar(&partitions, "partitions", 16, "partition count the ledger was started with")
	fs.StringVar(&prefix, "prefix", "tally", "key prefix")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON (amounts as decimal strings) instead of a summary")
	fs.BoolVar(&strict, "strict", false, "exit with status 1 on warnings too (late work: stuck transfers, outbox lag, dead letters)")
	fs.StringVar(&opts.Group, "group", outbox.DefaultGroup, "relay consumer group whose progress is checked")
	fs.StringVar(&consumers, "consumers", ledger.DefaultProjectorName, "comma-separated dedup consumers whose watermarks are checked against account versions (empty: none)")
	fs.DurationVar(&opts.MaxLag, "max-lag", 5*time.Minute, "warn when the oldest unacknowledged outbox entry is older, or a pending one was not retried for as long")
	fs.DurationVar(&opts.StuckAfter, "stuck-after", 5*time.Minute, "warn when a transfer is in flight, or an expired hold unswept, for longer")
	fs.Int64Var(&opts.OutboxSample, "outbox-sample", 10_000, "newest outbox entries per partition checked against account versions (negative: none)")
	if err := parse(fs, args); err != nil {
		return err
	}
	// Non-nil, so that an empty --consumers checks none rather than the default.
	opts.Consumers = append([]string{}, splitList(consumers)...)
	rdb, closeRedis, err := rf.connect(ctx, slog.New(slog.NewTextHandler(stderr, nil)), false)
	if err != nil {
		return err
	}
	defer closeRedis()
	l, err := ledger.Open(ctx, rdb, ledger.Config{Prefix: prefix, Partitions: partitions})
	if err != nil {
		return err
	}
	rep, err := l.VerifyWith(ctx, opts)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = writeVerifySummary(stdout, rep, opts.Group)
	}
	if err != nil {
		return err
	}
	switch {
	case !rep.OK():
		return fmt.Errorf("verify: %d invariant violations", len(rep.Problems))
	case strict && len(rep.Warnings) > 0:
		return fmt.Errorf("verify: %d warnings (--strict)", len(rep.Warnings))
	}
	return nil
}

// maxListed bounds the in-flight transfers the summary lists one by one.
const maxListed = 10

// writeVerifySummary writes the report for people: counts, money per currency, outbox
// progress, then every warning and violation on a line of its own.
func writeVerifySummary(w io.Writer, rep ledger.VerifyReport, group string) error {
	fmt.Fprintf(w, "accounts %d, events %d, transfers %d (%d in flight), holds: %d pending, %d captured, %d voided, %d expired\n\n",
		rep.Accounts, rep.Events, rep.Transfers, rep.Pending, rep.Holds.Pending, rep.Holds.Captured, rep.Holds.Voided, rep.Holds.Expired)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "currency\tposted\theld\tin flight\tdeposits\twithdrawals\tcaptured out\t")
	currencies := map[string]bool{}
	for _, m := range []ledger.Sums{rep.Totals, rep.InFlight, rep.Deposits, rep.Withdrawals, rep.CapturedOut} {
		for c := range m {
			currencies[c] = true
		}
	}
	for _, c := range slices.Sorted(maps.Keys(currencies)) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", c, rep.Totals.Get(c), rep.Held.Get(c), rep.InFlight.Get(c),
			rep.Deposits.Get(c), rep.Withdrawals.Get(c), rep.CapturedOut.Get(c))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var backlog, pending, idle, dead int64
	var oldest float64
	for _, p := range rep.Outbox {
		backlog, pending, idle, dead = backlog+p.Backlog, pending+p.Pending, idle+p.IdlePending, dead+p.DeadLetters
		oldest = max(oldest, p.OldestAgeSeconds)
	}
	fmt.Fprintf(w, "\noutbox (group %s, %d partitions): backlog %d, pending %d, idle pending %d, dead letters %d, oldest unacknowledged %.1fs\n",
		group, len(rep.Outbox), backlog, pending, idle, dead, oldest)
	for i, t := range rep.InFlightTransfers {
		if i == maxListed {
			fmt.Fprintf(w, "  … and %d more in flight\n", len(rep.InFlightTransfers)-maxListed)
			break
		}
		fmt.Fprintf(w, "  in flight: %s %s→%s %d %s, debited %s\n", t.ID, t.From, t.To, t.Amount, t.Currency, t.DebitedAt.Format(time.RFC3339))
	}
	for _, l := range []struct {
		name  string
		items []ledger.Problem
	}{{"warnings", rep.Warnings}, {"VIOLATIONS", rep.Problems}} {
		if len(l.items) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%d):\n", l.name, len(l.items))
		for _, p := range l.items {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	verdict := "\nOK: no invariant violated"
	if !rep.OK() {
		verdict = fmt.Sprintf("\nFAILED: %d invariant violations", len(rep.Problems))
	}
	if len(rep.Warnings) > 0 {
		verdict += fmt.Sprintf(" (%d warnings)", len(rep.Warnings))
	}
	_, err := fmt.Fprintln(w, verdict)
	return err
}
