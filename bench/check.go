package bench

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/tally-ledger/tally/ledger"
)

// maxProblems bounds the problems one run reports.
const maxProblems = 20

// check compares the run's accounts with what the clients were told, after settle:
//
//   - each account's posted balance equals its seed plus what the answers applied
//     (deposits, withdrawals, completed transfers, captured holds), and nothing is still
//     held; accounts with a lost answer are only bounded, through the sums below;
//   - Σ posted over the run's accounts equals Σ seeds + deposits − withdrawals − captures
//     acknowledged (transfers are neutral), within the amounts of lost answers;
//   - no account without allow_negative has a negative available balance;
//   - replay = snapshot: the library runs ledger.Verify over the run's key prefix (every
//     account's event stream replayed and compared with its snapshot, money conserved
//     along the events, every transfer debited once); over HTTP, CheckSample accounts are
//     replayed from their events, and with a Redis ledger.Verify runs on the server's keys.
//
// It returns what it compared, for the table, and the problems it found; an error when it
// could not read the accounts.
func (r *runner) check(ctx context.Context, d driver, l *ledger.Ledger, st *state, out *loadOutcome) (string, []string, error) {
	n := len(st.ids)
	snaps := make([]*ledger.Account, n)
	err := parallel(ctx, min(r.cfg.Workers, n), n, func(i int) error {
		a, err := d.account(ctx, st.ids[i])
		if err != nil {
			return fmt.Errorf("read %s: %w", st.ids[i], err)
		}
		snaps[i] = a
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	var (
		problems          []string
		total, want, held int64
		uncertain         int
	)
	add := func(format string, args ...any) {
		if len(problems) < maxProblems {
			problems = append(problems, fmt.Sprintf(format, args...))
		} else if len(problems) == maxProblems {
			problems = append(problems, "… (more problems not shown)")
		}
	}
	for i, a := range snaps {
		b := a.Balances[currency]
		total += b.Posted
		held += b.Held
		want += st.expected[i].Load()
		for c, bc := range a.Balances {
			if !a.AllowNegative && bc.Available < 0 {
				add("%s: available %s balance %d is negative", a.ID, c, bc.Available)
			}
		}
		if st.uncertain[i].Load() {
			uncertain++
			continue
		}
		if b.Posted != st.expected[i].Load() {
			add("%s: posted %d, the answers add up to %d", a.ID, b.Posted, st.expected[i].Load())
		}
		if b.Held != 0 {
			add("%s: %d still held after every hold was resolved", a.ID, b.Held)
		}
	}
	if uncertain == 0 && total != want {
		add("money not conserved: Σ posted %d, seeds and acknowledged operations add up to %d", total, want)
	}
	if uncertain > 0 && (total < want-out.unknownOut || total > want+out.unknownIn) {
		add("money not conserved: Σ posted %d, acknowledged operations add up to %d, answers lost for %d in and %d out",
			total, want, out.unknownIn, out.unknownOut)
	}
	summary := fmt.Sprintf("Σ posted %d = expected", total)
	if uncertain > 0 {
		summary = fmt.Sprintf("Σ posted %d, expected %d (+%d/−%d lost answers, %d accounts bounded only)", total, want, out.unknownIn, out.unknownOut, uncertain)
	}

	if r.http != nil && r.cfg.CheckSample > 0 {
		sample := sampleIndexes(n, r.cfg.CheckSample)
		var mu sync.Mutex
		err := parallel(ctx, min(r.cfg.Workers, len(sample)), len(sample), func(k int) error {
			i := sample[k]
			rep, err := d.replay(ctx, st.ids[i])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				add("%s: replay: %v", st.ids[i], err)
				return nil
			}
			if diff := differ(snaps[i], rep); diff != "" {
				add("%s: snapshot differs from its events: %s", st.ids[i], diff)
			}
			return nil
		})
		if err != nil {
			return "", nil, err
		}
		summary += fmt.Sprintf("; replay = snapshot for %d sampled accounts", len(sample))
	}
	v := l
	if r.http != nil {
		v = r.verifier
	}
	if v != nil {
		rep, err := v.Verify(ctx)
		if err != nil {
			return "", nil, fmt.Errorf("verify: %w", err)
		}
		for _, p := range rep.Problems {
			add("verify: %s", p)
		}
		summary += fmt.Sprintf("; verify: %d accounts, %d events, %d transfers", rep.Accounts, rep.Events, rep.Transfers)
	}
	return summary, problems, nil
}

// sampleIndexes returns up to k indexes spread evenly over 0..n-1.
func sampleIndexes(n, k int) []int {
	if k >= n {
		out := make([]int, n)
		for i := range out {
			out[i] = i
		}
		return out
	}
	out := make([]int, k)
	for j := range out {
		out[j] = j * n / k
	}
	return out
}

// differ describes how a snapshot and a replay differ in version, status and posted and
// held amounts, or returns "".
func differ(snap, rep *ledger.Account) string {
	if snap.Version != rep.Version {
		return fmt.Sprintf("version %d, replay %d", snap.Version, rep.Version)
	}
	if snap.Status != rep.Status {
		return fmt.Sprintf("status %s, replay %s", snap.Status, rep.Status)
	}
	cs := slices.Sorted(maps.Keys(snap.Balances))
	for c := range rep.Balances {
		if _, ok := snap.Balances[c]; !ok {
			cs = append(cs, c)
		}
	}
	for _, c := range cs {
		s, p := snap.Balances[c], rep.Balances[c]
		if s.Posted != p.Posted || s.Held != p.Held {
			return fmt.Sprintf("%s posted %d held %d, replay posted %d held %d", c, s.Posted, s.Held, p.Posted, p.Held)
		}
	}
	return ""
}
