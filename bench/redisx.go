package bench

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// commandCounter counts the commands Redis servers executed, from INFO commandstats
// (commands scripts run included; INFO and PING left out).
type commandCounter struct {
	data    redis.UniversalClient
	masters []*redis.Client
}

// count returns the commands executed so far by the data Redis (summed over a Cluster's
// masters) and by the lock masters. ok is false when a server does not report them (the
// embedded Redis).
func (c commandCounter) count(ctx context.Context) (data, masters int64, ok bool) {
	if c.data == nil {
		return 0, 0, false
	}
	var mu sync.Mutex
	get := func(ctx context.Context, cl *redis.Client, into *int64) error {
		info, err := cl.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		n, found := commandCalls(info)
		if !found {
			return errNoStats
		}
		mu.Lock()
		*into += n
		mu.Unlock()
		return nil
	}
	if err := redisx.ForEachMaster(ctx, c.data, func(ctx context.Context, cl *redis.Client) error { return get(ctx, cl, &data) }); err != nil {
		return 0, 0, false
	}
	for _, m := range c.masters {
		if err := get(ctx, m, &masters); err != nil {
			return 0, 0, false
		}
	}
	return data, masters, true
}

// errNoStats is a server's INFO reply without command statistics.
var errNoStats = errors.New("no command statistics")

// commandCalls sums the calls of an INFO commandstats reply, except INFO and PING; found is
// false when the reply has no command statistics.
func commandCalls(info string) (n int64, found bool) {
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		found = true
		if name == "cmdstat_info" || name == "cmdstat_ping" {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		if v, err := strconv.ParseInt(calls, 10, 64); err == nil {
			n += v
		}
	}
	return n, found
}

// deletePrefix deletes every key that starts with prefix+":" (on every master of a
// Cluster).
func deletePrefix(ctx context.Context, rdb redis.UniversalClient, prefix string) error {
	return redisx.ForEachMaster(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		flush := func() error {
			if len(keys) == 0 {
				return nil
			}
			pipe := c.Pipeline()
			for _, k := range keys {
				pipe.Del(ctx, k)
			}
			keys = keys[:0]
			_, err := pipe.Exec(ctx)
			return err
		}
		for iter.Next(ctx) {
			if keys = append(keys, iter.Val()); len(keys) == 1000 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return flush()
	})
}
