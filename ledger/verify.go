package ledger

import (
	"context"
	"fmt"
	"math/big"
	"reflect"
	"sort"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// VerifyReport is the result of checking the ledger's invariants over every account.
type VerifyReport struct {
	Accounts int                 `json:"accounts"`
	Events   int64               `json:"events"`
	Totals   map[string]*big.Int `json:"totals"` // sum of posted balances per currency (no overflow)
	Problems []string            `json:"problems"`
}

// OK reports whether no invariant was violated.
func (r VerifyReport) OK() bool { return len(r.Problems) == 0 }

// Verify scans every account (on every master of a Cluster), replays its event stream and
// checks that the replay equals the snapshot and that no account without allow_negative has
// a negative available balance. It returns an error only when Redis fails; violations are
// listed in the report.
func (l *Ledger) Verify(ctx context.Context) (VerifyReport, error) {
	rep := VerifyReport{Totals: map[string]*big.Int{}}
	var (
		mu  sync.Mutex
		ids []string
	)
	pattern := l.cfg.Prefix + ":{*}:acct:*"
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			id := k[strings.LastIndex(k, ":acct:")+len(":acct:"):]
			if strings.Contains(id, ":") { // an account's other keys (its event stream)
				continue
			}
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	switch c := l.store.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan) // runs on the masters concurrently
	case *redis.Client:
		err = scan(ctx, c)
	default:
		return rep, fmt.Errorf("ledger: verify: unsupported client %T", c)
	}
	if err != nil {
		return rep, storeErr(ctx, err)
	}
	sort.Strings(ids)
	for _, id := range ids {
		snap, err := l.store.account(ctx, id)
		if err != nil {
			return rep, err
		}
		replayed, err := l.Replay(ctx, id)
		if err != nil {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: replay: %v", id, err))
			continue
		}
		rep.Accounts++
		rep.Events += replayed.Version
		if !reflect.DeepEqual(snap, replayed) {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: snapshot (version %d) differs from replay (version %d)", id, snap.Version, replayed.Version))
		}
		for c, b := range snap.Balances {
			if rep.Totals[c] == nil {
				rep.Totals[c] = new(big.Int)
			}
			rep.Totals[c].Add(rep.Totals[c], big.NewInt(b.Posted))
			if !snap.AllowNegative && b.Available < 0 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("%s: available %s balance %d is negative", id, c, b.Available))
			}
		}
	}
	return rep, nil
}
