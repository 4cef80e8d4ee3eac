package outbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Dead-letter entry fields, added to the original outbox entry's fields.
const (
	FieldDeadOrigin   = "dead_origin"   // outbox stream ID the entry had
	FieldDeadReason   = "dead_reason"   // last delivery error
	FieldDeadAttempts = "dead_attempts" // failed deliveries before it was moved
	FieldDeadOwner    = "dead_owner"    // relay that moved it
	FieldDeadGroup    = "dead_group"    // consumer group that failed to deliver it
	FieldDeadAt       = "dead_at"       // unix milliseconds when it was moved
	// FieldReplayedFrom is set on an outbox entry re-injected by ReplayDeadLetters: the ID
	// the entry had in the dead-letter stream.
	FieldReplayedFrom = "replayed_from"
)

// maxReasonLen bounds the stored reason of a dead letter.
const maxReasonLen = 1024

// deadLetterScript copies an outbox entry to the dead-letter stream with the reason,
// acknowledges it and forgets its failure count, all in one step (one slot: {p}). With
// ARGV[7] > 0 the dead-letter stream is trimmed to about that many entries (XADD MAXLEN ~).
// It returns {entries copied (0 or 1), dead letters the trimming removed}.
var deadLetterScript = redis.NewScript(`
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local dropped = 0
if #e == 1 then
  local f = e[1][2]
  local extra = {'dead_origin', ARGV[2], 'dead_reason', ARGV[3], 'dead_attempts', ARGV[4],
    'dead_owner', ARGV[5], 'dead_group', ARGV[1], 'dead_at', ARGV[6]}
  for _, v in ipairs(extra) do f[#f + 1] = v end
  local maxlen = tonumber(ARGV[7])
  if maxlen > 0 then
    local before = redis.call('XLEN', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(f))
    dropped = before + 1 - redis.call('XLEN', KEYS[2])
  else
    redis.call('XADD', KEYS[2], '*', unpack(f))
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return {#e, dropped}`)

// deadLetter moves outbox entry id to the dead letters with reason. Like ack, it completes
// even when the lease was lost meanwhile.
func (o *partition) deadLetter(ctx context.Context, id, reason string, attempts int64) error {
	r := o.r
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	res, err := deadLetterScript.Run(actx, r.rdb,
		[]string{o.stream, DeadLetterKey(r.cfg.Prefix, o.p), r.attemptsKey(o.p)},
		r.cfg.Group, id, reason, attempts, r.cfg.Owner, r.cfg.Clock().UnixMilli(), max(r.cfg.DeadLetterMaxLen, 0)).Int64Slice()
	if err != nil {
		return fmt.Errorf("outbox: dead-letter %s on %s: %w", id, o.stream, err)
	}
	var dropped int64
	if len(res) == 2 {
		dropped = res[1]
	}
	if dropped > 0 {
		r.log.Warn("outbox relay: dead-letter stream full, oldest dead letters dropped", "partition", o.p,
			"dropped", dropped, "max_len", r.cfg.DeadLetterMaxLen)
	}
	r.m.deadLettered(o.p, dropped)
	return nil
}

// DeadLetter is one entry of a partition's dead-letter stream.
type DeadLetter struct {
	ID       string    // ID in the dead-letter stream
	Origin   string    // ID the entry had in the outbox stream
	Reason   string    // the last delivery error
	Attempts int64     // failed deliveries before it was moved (0: malformed, never delivered)
	Owner    string    // relay that moved it
	Group    string    // consumer group that could not deliver it
	At       time.Time // when it was moved
	// Msg is the entry's message, with Partition and StreamID (= Origin) set; zero when
	// the entry was malformed.
	Msg Message
}

// DeadLetters returns up to count dead letters of partition p, oldest first. It returns
// ErrUnknownPartition for a partition out of range and wrapped Redis errors.
func (a *Admin) DeadLetters(ctx context.Context, p int, count int64) ([]DeadLetter, error) {
	if err := a.checkPartition(p); err != nil {
		return nil, err
	}
	xs, err := a.rdb.XRangeN(ctx, DeadLetterKey(a.cfg.Prefix, p), "-", "+", count).Result()
	if err != nil {
		return nil, fmt.Errorf("outbox: read dead letters of partition %d: %w", p, err)
	}
	out := make([]DeadLetter, 0, len(xs))
	for _, x := range xs {
		str := func(k string) string { s, _ := x.Values[k].(string); return s }
		d := DeadLetter{ID: x.ID, Origin: str(FieldDeadOrigin), Reason: str(FieldDeadReason),
			Owner: str(FieldDeadOwner), Group: str(FieldDeadGroup)}
		d.Attempts, _ = strconv.ParseInt(str(FieldDeadAttempts), 10, 64)
		if ms, err := strconv.ParseInt(str(FieldDeadAt), 10, 64); err == nil {
			d.At = time.UnixMilli(ms)
		}
		if m, err := DecodeEntry(x.Values); err == nil {
			m.Partition, m.StreamID = p, d.Origin
			d.Msg = m
		}
		out = append(out, d)
	}
	return out, nil
}

// replayBatch bounds the entries one replay script moves.
const replayBatch = 500

// replayScript moves dead letters back to the end of the outbox stream, without their
// dead_* fields and with replayed_from, and deletes them from the dead-letter stream, in
// one step.
var replayScript = redis.NewScript(`
local es = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
for _, e in ipairs(es) do
  local out = {}
  local f = e[2]
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 5) ~= 'dead_' then
      out[#out + 1] = f[i]
      out[#out + 1] = f[i + 1]
    end
  end
  out[#out + 1] = 'replayed_from'
  out[#out + 1] = e[1]
  redis.call('XADD', KEYS[2], '*', unpack(out))
  redis.call('XDEL', KEYS[1], e[1])
end
return #es`)

// ReplayDeadLetters re-injects the dead letters of the given partitions (all partitions when
// none are given) at the end of their outbox streams, oldest first, so the relay delivers
// them again to every consumer group; consumers deduplicate by message ID. It is an admin
// operation and may run in any process. It returns how many entries it moved.
//
// A replayed message arrives after later messages of its key (it is out of sequence order
// by nature); Dedup accepts it because its sequence number was recorded as a gap when the
// later messages were applied.
func (a *Admin) ReplayDeadLetters(ctx context.Context, partitions ...int) (int, error) {
	if len(partitions) == 0 {
		for p := 0; p < a.cfg.Partitions; p++ {
			partitions = append(partitions, p)
		}
	}
	total := 0
	for _, p := range partitions {
		if err := a.checkPartition(p); err != nil {
			return total, err
		}
		keys := []string{DeadLetterKey(a.cfg.Prefix, p), StreamKey(a.cfg.Prefix, p)}
		for {
			n, err := replayScript.Run(ctx, a.rdb, keys, replayBatch).Int()
			if err != nil {
				return total, fmt.Errorf("outbox: replay dead letters of partition %d: %w", p, err)
			}
			total += n
			if n < replayBatch {
				break
			}
		}
	}
	return total, nil
}
