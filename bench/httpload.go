package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

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
	body     []byte
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

// transferAnswer is the part of a transfer's answer the bench reads.
type transferAnswer struct {
	Status string `json:"status"`
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
		t.body = fmt.Appendf(nil, `{"id":%q,"from":%q,"to":%q,"currency":"USD","amount":%d}`, t.id, a.ids[from], a.ids[to], t.amount)
		start := time.Now()
		status, resp, err := hb.d.send(ctx, http.MethodPost, "/v1/transfers", "", t.body)
		d := time.Since(start)
		c.requests++
		if err != nil {
			c.count(&c.httpStatus, "error")
			c.count(&c.opStatus, "unknown")
			c.unknown = append(c.unknown, t)
			return
		}
		c.lat.Record(d)
		c.count(&c.httpStatus, strconv.Itoa(status))
		outcome := hb.transferOutcome(a, t, status, resp)
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

// transferOutcome applies what an answer to transfer t says to a, and names it: completed
// or refunded (applied), pending (the saga finishes it), unknown (5xx or an unreadable
// answer: ask again), or "rejected <status>" (nothing was written).
func (hb *httpBench) transferOutcome(a *benchAccounts, t benchTransfer, status int, resp []byte) string {
	switch {
	case status == http.StatusCreated || status == http.StatusAccepted || status == http.StatusOK:
		var ans transferAnswer
		if err := json.Unmarshal(resp, &ans); err != nil {
			return "unknown"
		}
		switch ans.Status {
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
		return ans.Status
	case status >= 500:
		return "unknown"
	default:
		return "rejected " + strconv.Itoa(status)
	}
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
		body := depositBatch(ids, hb.cfg.AtomicBatch, func(i int) int64 { return amounts[i] })
		start := time.Now()
		status, resp, err := hb.d.send(ctx, http.MethodPost, "/v1/batch", "", body)
		d := time.Since(start)
		c.requests++
		if err != nil {
			c.count(&c.httpStatus, "error")
		} else {
			c.lat.Record(d)
			c.count(&c.httpStatus, strconv.Itoa(status))
		}
		var statuses []int
		if err == nil && status == http.StatusOK {
			if statuses, err = batchStatuses(resp); err == nil && len(statuses) != size {
				err = errors.New("result count")
			}
		}
		if err != nil || status >= 500 {
			c.add(&c.opStatus, "unknown", int64(size))
			c.unknownOps += int64(size)
			c.unknownAmount += total
			return
		}
		if status != http.StatusOK { // refused as a whole: nothing written
			c.add(&c.opStatus, "rejected "+strconv.Itoa(status), int64(size))
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

// depositBatch returns the body of a POST /v1/batch that deposits amount(i) USD into
// ids[i].
func depositBatch(ids []string, atomic bool, amount func(i int) int64) []byte {
	b := make([]byte, 0, 32+80*len(ids))
	b = fmt.Appendf(b, `{"atomic":%t,"operations":[`, atomic)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"type":"deposit","account":%q,"currency":"USD","amount":%d}`, id, amount(i))
	}
	return append(b, "]}"...)
}

// batchStatuses returns the per-operation statuses of a POST /v1/batch answer.
func batchStatuses(resp []byte) ([]int, error) {
	var ans struct {
		Results []struct {
			Status int `json:"status"`
		} `json:"results"`
	}
	if err := json.Unmarshal(resp, &ans); err != nil {
		return nil, fmt.Errorf("batch answer: %w", err)
	}
	out := make([]int, len(ans.Results))
	for i, r := range ans.Results {
		out[i] = r.Status
	}
	return out, nil
}
