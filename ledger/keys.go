package ledger

import (
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/tally-ledger/tally/outbox"
)

// keyspace names every Redis key of the ledger. All keys of partition p carry the hash tag
// {p}, so one script can touch an account's snapshot, its event stream, its idempotency
// records and the partition outbox on a single node or on Redis Cluster alike.
type keyspace struct {
	prefix     string
	partitions int
}

// PlacementSeparator splits a placement tag from the rest of an ID: accounts "shop1..alice"
// and "shop1..bob" share the placement tag "shop1", so they share a partition and money
// moves between them atomically (one script). IDs without it place by the whole ID.
const PlacementSeparator = ".."

// partitionOf returns the partition of an ID: FNV-1a of its placement tag (the part before
// the first PlacementSeparator) or of the whole ID, modulo the count.
func partitionOf(id string, partitions int) int {
	if i := strings.Index(id, PlacementSeparator); i > 0 {
		id = id[:i]
	}
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

// ops is the hash of the internal operation tokens of partition p's keyless writes made in
// one tenth of a second (at: when the write was submitted): a field per token. A token
// makes a commit whose reply was lost (network error after the script ran) recognisable on
// retry, so it never applies twice. One hash per partition and tenth of a second rather
// than a key per write: a commit writes all its tokens with one HSET, and Redis keeps one
// key and one expiry for them. A tenth of a second keeps each hash small (5,000 fields at
// 50,000 keyless writes/s into one partition), so that freeing one when it expires stays
// well under a millisecond of Redis's time.
func (k keyspace) ops(p int, at time.Time) string {
	return k.tag(p) + "ops:" + strconv.FormatInt(at.UnixMilli()/100, 10)
}

func (k keyspace) outbox(p int) string { return outbox.StreamKey(k.prefix, p) }

// hold is the record of one hold of an account: its response and its state (for GET).
func (k keyspace) hold(p int, account, hold string) string {
	return k.tag(p) + "hold:" + account + ":" + hold
}

// holdExpiry indexes the pending holds of a partition by expiry (score: Unix ms, member:
// "<account>:<hold>") for the sweeper.
func (k keyspace) holdExpiry(p int) string { return k.tag(p) + "holds:expiry" }

// transfer is the durable record of a transfer, in its source account's partition.
func (k keyspace) transfer(p int, id string) string { return k.tag(p) + "transfer:" + id }

// transferStep records the outcome of a saga step ("credit" in the destination's partition,
// "refund" in the source's), so that each step happens at most once.
func (k keyspace) transferStep(p int, id, step string) string {
	return k.tag(p) + "transfer:" + id + ":" + step
}

// transfersPending indexes a partition's transfers that are not finished yet (score:
// creation time, Unix ms), for the sweep.
func (k keyspace) transfersPending(p int) string { return k.tag(p) + "transfers:pending" }

// transferIndex names the source account of a transfer ID, in the partition of the ID
// itself, so that GET /v1/transfers/{id} finds the record and two transfers from different
// sources cannot take one ID.
func (k keyspace) transferIndex(id string) string {
	return k.tag(partitionOf(id, k.partitions)) + "transfer-index:" + id
}

// meta holds deployment-wide settings recorded on first start (the partition count).
func (k keyspace) meta() string { return k.prefix + ":meta" }
