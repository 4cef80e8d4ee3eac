package bench

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// The HTTP scenarios' load: Clients goroutines in closed loops, each posting transfers or
// batches and booking what every answer says about the accounts (benchAccounts), for
// settle and check (httpcheck.go) to compare with the ledger afterwards.

// loadStats are the merged results of a row's clients.
type loadStats struct {
	ops, requests int64
	elapsed       time.Duration
	lat           *Latencies
	httpStatus    map[string]int64 // by HTTP status, or "error" for transport errors
	opStatus      map[string]int64 // by operation outcome
	pending       []benchTransfer  // answered 202: the saga finishes them
	unknown       []benchTransfer  // no answer, or 5xx: outcome unknown until resolved
	unknownOps    int64            // batch: deposits in requests without an answer
	unknownAmount int64            // batch: their sum
	checked       string           // what the check compared, for the table
}

// benchClient is one client's share of a row's results, merged at the end.
type benchClient struct {
	lat           *Latencies
	ops, requests int64
	httpStatus    map[string]int64
	opStatus      map[string]int64
	pending       []benchTransfer
	unknown       []benchTransfer
	unknownOps    int64
	unknownAmount int64
}

func (c *benchClient) count(m *map[string]int64, k string) { c.add(m, k, 1) }

func (c *benchClient) add(m *map[string]int64, k string, n int64) {
	if *m == nil {
		*m = map[string]int64{}
	}
	(*m)[k] += n
}

// benchTransfer is a transfer whose outcome the client learns after the load.
type benchTransfer struct {
	id       string
	from, to int
	amount   int64
}

// runClients runs hb.cfg.Clients goroutines that call one until Duration has passed (a
// request in flight then finishes), and merges their results.
func (hb *httpBench) runClients(ctx context.Context, one func(c *benchClient, w int, rng *mrand.Rand, seq int64)) *loadStats {
	clients := make([]benchClient, hb.cfg.Clients)
	for i := range clients {
		clients[i].lat = NewLatencies()
	}
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(hb.cfg.Duration)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rngFor(w)
			for seq := int64(0); ctx.Err() == nil && time.Now().Before(deadline); seq++ {
				one(&clients[w], w, rng, seq)
			}
		}()
	}
	wg.Wait()
	st := &loadStats{elapsed: time.Since(start), lat: NewLatencies(),
		httpStatus: map[string]int64{}, opStatus: map[string]int64{}}
	for i := range clients {
		c := &clients[i]
		st.lat.Merge(c.lat)
		st.ops += c.ops
		st.requests += c.requests
		for k, v := range c.httpStatus {
			st.httpStatus[k] += v
		}
		for k, v := range c.opStatus {
			st.opStatus[k] += v
		}
		st.pending = append(st.pending, c.pending...)
		st.unknown = append(st.unknown, c.unknown...)
		st.unknownOps += c.unknownOps
		st.unknownAmount += c.unknownAmount
	}
	return st
}

// runTransfers moves 1..100 USD between random pairs of accounts: of one placement tag
// (same) or of different partitions (cross). Every transfer carries its own ID, so one
// whose answer was lost can be asked again afterwards.
func (hb *httpBench) runTransfers(ctx context.Context, a *benchAccounts, same bool, tag string) (*loadStats, error) {
	n := len(a.ids)
	pick := func(rng *mrand.Rand) (int, int) {
		from := rng.IntN(n)
		if same {
			for {
				if to := a.groupMember(from%a.groups, rng); to != from {
					return from, to
				}
			}
		}
		for {
			if to := rng.IntN(n); a.partition[to] != a.partition[from] {
				return from, to
			}
		}
	}
	st := hb.runClients(ctx, func(c *benchClient, w int, rng *mrand.Rand, seq int64) {
		from, to := pick(rng)
		t := benchTransfer{id: fmt.Sprintf("t%s.%d.%d", tag, w, seq), from: from, to: to, amount: 1 + rng.Int64N(100)}
		start := time.Now()
		status, err := hb.d.transfer(ctx, t.id, a.ids[from], a.ids[to], t.amount)
		d := time.Since(start)
		c.requests++
		if code := answerStatus(err, status); code == 0 {
			c.count(&c.httpStatus, "error")
		} else {
			c.lat.Record(d)
			c.count(&c.httpStatus, strconv.Itoa(code))
		}
		outcome := hb.transferOutcome(a, t, status, err)
		c.count(&c.opStatus, outcome)
		switch outcome {
		case ledger.TransferCompleted, ledger.TransferPending:
			c.ops++
		}
		switch outcome {
		case ledger.TransferPending:
			c.pending = append(c.pending, t)
		case "unknown":
			c.unknown = append(c.unknown, t)
		}
	})
	return st, ctx.Err()
}

// transferOutcome applies what the answer to transfer t says to a, and names it: completed
// or refunded (applied), pending (the saga finishes it), unknown (no answer, a 5xx or an
// unreadable answer: ask again), or "rejected <status>" (nothing was written). status is
// the transfer's status when err is nil.
func (hb *httpBench) transferOutcome(a *benchAccounts, t benchTransfer, status string, err error) string {
	var pe *ProblemError
	switch {
	case errors.As(err, &pe) && pe.Status < 500:
		return "rejected " + strconv.Itoa(pe.Status)
	case err != nil:
		return "unknown"
	}
	switch status {
	case ledger.TransferCompleted:
		a.delta[t.from].Add(-t.amount)
		a.delta[t.to].Add(t.amount)
		a.events[t.from].Add(1)
		a.events[t.to].Add(1)
	case ledger.TransferRefunded:
		a.events[t.from].Add(2) // TransferDebited, TransferRefunded
	case ledger.TransferPending:
	default:
		return "unknown"
	}
	return status
}

// answerStatus is the HTTP status of a transfer's answer for the table: the problem's
// status, 202 for a pending transfer, 201 for an ended one (the client reports the
// transfer, not the status line), 0 when no answer came.
func answerStatus(err error, transferStatus string) int {
	if transferStatus == ledger.TransferPending {
		return status(err, http.StatusAccepted)
	}
	return status(err, http.StatusCreated)
}

// runBatch sends batches of --batch-size deposits of 1..100 USD into random accounts,
// atomic=false.
func (hb *httpBench) runBatch(ctx context.Context, a *benchAccounts) (*loadStats, error) {
	size := hb.cfg.BatchSize
	st := hb.runClients(ctx, func(c *benchClient, _ int, rng *mrand.Rand, _ int64) {
		idx := make([]int, size)
		amounts := make([]int64, size)
		var total int64
		ids := make([]string, size)
		pick := func() int { return rng.IntN(len(a.ids)) }
		if hb.cfg.AtomicBatch {
			g := rng.IntN(a.groups)
			pick = func() int { return a.groupMember(g, rng) }
		}
		for i := range idx {
			idx[i], amounts[i] = pick(), 1+rng.Int64N(100)
			ids[i] = a.ids[idx[i]]
			total += amounts[i]
		}
		req := depositBatch(ids, hb.cfg.AtomicBatch, func(i int) int64 { return amounts[i] })
		start := time.Now()
		statuses, err := hb.d.batch(ctx, req)
		d := time.Since(start)
		c.requests++
		var pe *ProblemError
		answered := err == nil || errors.As(err, &pe)
		if answered {
			c.lat.Record(d)
			c.count(&c.httpStatus, strconv.Itoa(status(err, http.StatusOK)))
		} else {
			c.count(&c.httpStatus, "error")
		}
		if err == nil && len(statuses) != size {
			err = &TransportError{Err: errors.New("batch answer: result count")}
			pe = nil
		}
		if err != nil && (pe == nil || pe.Status >= 500) {
			c.add(&c.opStatus, "unknown", int64(size))
			c.unknownOps += int64(size)
			c.unknownAmount += total
			return
		}
		if err != nil { // refused as a whole: nothing written
			c.add(&c.opStatus, "rejected "+strconv.Itoa(pe.Status), int64(size))
			return
		}
		for i, s := range statuses {
			c.count(&c.opStatus, strconv.Itoa(s))
			switch {
			case s == http.StatusCreated:
				c.ops++
				a.delta[idx[i]].Add(amounts[i])
				a.events[idx[i]].Add(1)
			case s >= 500: // 503 after a deadline may have been applied
				c.unknownOps++
				c.unknownAmount += amounts[i]
			}
		}
	})
	return st, ctx.Err()
}

// depositBatch returns a batch that deposits amount(i) USD into ids[i].
func depositBatch(ids []string, atomic bool, amount func(i int) int64) client.BatchRequest {
	ops := make([]client.BatchOp, len(ids))
	for i, id := range ids {
		ops[i] = client.BatchOp{Type: client.OpDeposit, Account: id, Currency: currency, Amount: amount(i)}
	}
	return client.BatchRequest{Atomic: atomic, Operations: ops}
}
