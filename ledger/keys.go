package ledger

import (
	"hash/fnv"
	"strconv"

	"github.com/tally-ledger/tally/outbox"
)

// keyspace names every Redis key of the ledger. All keys of partition p carry the hash tag
// {p}, so one script can touch an account's snapshot, its event stream, its idempotency
// records and the partition outbox on a single node or on Redis Cluster alike.
type keyspace struct {
	prefix     string
	partitions int
}

// Partition returns the partition of an account: FNV-1a of the ID modulo the count.
func partitionOf(id string, partitions int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % uint32(partitions))
}

func (k keyspace) partition(account string) int { return partitionOf(account, k.partitions) }

func (k keyspace) tag(p int) string { return k.prefix + ":{" + strconv.Itoa(p) + "}:" }

func (k keyspace) snapshot(p int, account string) string { return k.tag(p) + "acct:" + account }

func (k keyspace) events(p int, account string) string {
	return k.tag(p) + "acct:" + account + ":events"
}

// idem is the record of a client's Idempotency-Key, scoped to the account written to.
func (k keyspace) idem(p int, account, key string) string {
	return k.tag(p) + "idem:" + account + ":" + key
}

// op is the record of an internal operation token: it makes a commit whose reply was lost
// (network error after the script ran) recognisable on retry, so it never applies twice.
func (k keyspace) op(p int, account, token string) string {
	return k.tag(p) + "op:" + account + ":" + token
}

func (k keyspace) outbox(p int) string { return outbox.StreamKey(k.prefix, p) }

// meta holds deployment-wide settings recorded on first start (the partition count).
func (k keyspace) meta() string { return k.prefix + ":meta" }
