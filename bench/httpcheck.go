package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tally-ledger/tally/internal/backoff"
	"github.com/tally-ledger/tally/ledger"
)

// settle learns the final outcome of every transfer answered 202 (polling GET
// /v1/transfers/{id} until the saga ends it, at most --settle-timeout) and of every
// transfer without an answer (posting it again with its ID, which replays or finishes it).
// It returns an error when some transfer does not end in time.
func (hb *httpBench) settle(ctx context.Context, a *benchAccounts, st *loadStats) error {
	if len(st.pending) == 0 && len(st.unknown) == 0 {
		return nil
	}
	deadline := time.Now().Add(hb.cfg.SettleTimeout)
	var mu sync.Mutex
	stuck := 0
	work := append(slices.Clone(st.pending), st.unknown...)
	firstUnknown := len(st.pending)
	err := parallel(ctx, min(hb.cfg.Clients, len(work)), len(work), func(i int) error {
		t := work[i]
		for attempt := 1; ; attempt++ {
			var status string
			var err error
			if i < firstUnknown {
				status, err = hb.d.getTransfer(ctx, t.id)
			} else {
				status, err = hb.d.transfer(ctx, t.id, a.ids[t.from], a.ids[t.to], t.amount)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			switch outcome := hb.transferOutcome(a, t, status, err); {
			case outcome == ledger.TransferCompleted || outcome == ledger.TransferRefunded:
				return nil
			case strings.HasPrefix(outcome, "rejected"):
				if i < firstUnknown {
					return fmt.Errorf("GET /v1/transfers/%s of a pending transfer: %w", t.id, err)
				}
				return nil // asked again, refused: the first attempt wrote nothing either
			}
			if time.Now().After(deadline) {
				mu.Lock()
				stuck++
				mu.Unlock()
				return nil
			}
			if err := backoff.Wait(ctx, retryDelay(attempt)); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return err
	}
	if stuck > 0 {
		return fmt.Errorf("%d of %d transfers (pending or unanswered) did not end within %v", stuck, len(work), hb.cfg.SettleTimeout)
	}
	return nil
}

// check reads every account of the row over HTTP and compares it with what the clients
// were told: each account's posted USD balance and version (the number of its events)
// must equal the sum of the answers that applied something (exactly; within the amounts of
// unanswered batches if there were any), no balance may be negative, and the total is
// conserved. With --redis it then runs ledger.Verify (replay = snapshot for every account,
// conservation with in-flight transfers, no double debit or credit).
func (hb *httpBench) check(ctx context.Context, a *benchAccounts, st *loadStats) error {
	type got struct{ posted, version int64 }
	res := make([]got, len(a.ids))
	err := parallel(ctx, min(hb.cfg.Clients, len(a.ids)), len(a.ids), func(i int) error {
		acc, err := hb.d.account(ctx, a.ids[i])
		if err != nil {
			return fmt.Errorf("GET /v1/accounts/%s: %w", a.ids[i], err)
		}
		res[i] = got{posted: acc.Balances["USD"].Posted, version: acc.Version}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading accounts: %w", err)
	}
	var problems []string
	var total, want, events, wantEvents int64
	for i, id := range a.ids {
		g := res[i]
		wp, wv := a.delta[i].Load(), a.events[i].Load() // setup added the seed balance and 2 events
		total, want, events, wantEvents = total+g.posted, want+wp, events+g.version, wantEvents+wv
		if g.posted < 0 {
			problems = append(problems, fmt.Sprintf("%s: posted balance %d is negative", id, g.posted))
		}
		if st.unknownOps == 0 && (g.posted != wp || g.version != wv) {
			problems = append(problems, fmt.Sprintf("%s: posted %d version %d, the answers add up to posted %d version %d", id, g.posted, g.version, wp, wv))
		}
		if st.unknownOps > 0 && (g.posted < wp || g.version < wv) {
			problems = append(problems, fmt.Sprintf("%s: posted %d version %d, below what the answers add up to (posted %d version %d)", id, g.posted, g.version, wp, wv))
		}
	}
	if st.unknownOps == 0 && total != want {
		problems = append(problems, fmt.Sprintf("money not conserved: Σ posted %d, expected %d", total, want))
	}
	if st.unknownOps > 0 && (total-want > st.unknownAmount || events-wantEvents > st.unknownOps) {
		problems = append(problems, fmt.Sprintf("Σ posted %d and Σ versions %d exceed what was acknowledged (%d, %d) by more than the unanswered deposits (%d ops, %d)",
			total, events, want, wantEvents, st.unknownOps, st.unknownAmount))
	}
	st.checked = fmt.Sprintf("Σ posted %d, Σ versions %d", total, events)
	if hb.ledger != nil && len(problems) == 0 {
		rep, err := hb.ledger.Verify(ctx)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		for _, p := range rep.Problems {
			problems = append(problems, "verify: "+p.String())
		}
		st.checked += fmt.Sprintf("; verify: %d accounts, %d events, %d transfers", rep.Accounts, rep.Events, rep.Transfers)
	}
	if len(problems) > 0 {
		const show = 10
		if len(problems) > show {
			problems = append(problems[:show], fmt.Sprintf("… and %d more", len(problems)-show))
		}
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// countsSummary returns "k=n k=n" in key order.
func countsSummary(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
