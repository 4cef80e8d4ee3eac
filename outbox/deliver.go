package outbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/backoff"
)

// partition is one owned partition's delivery state. It lives only while the relay holds
// the partition's lease; every method takes the lease's ctx and stops as soon as it is done.
type partition struct {
	r      *Relay
	p      int
	stream string
}

// ackTimeout bounds an XACK that runs after the lease's ctx was cancelled: an entry that was
// delivered is acknowledged even if the lease was lost meanwhile.
const ackTimeout = 5 * time.Second

// start prepares ownership: it makes sure the consumer group exists, records the owner,
// takes over entries that earlier owners read but did not acknowledge, and redelivers this
// relay's own pending entries, oldest first.
func (o *partition) start(ctx context.Context) error {
	r := o.r
	err := r.rdb.XGroupCreateMkStream(ctx, o.stream, r.cfg.Group, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return fmt.Errorf("outbox: create group %s on %s: %w", r.cfg.Group, o.stream, err)
	}
	if err := r.recordOwner(ctx, o.p); err != nil {
		return fmt.Errorf("outbox: record owner: %w", err)
	}
	others, err := o.othersPending(ctx)
	if err != nil {
		return err
	}
	if err := o.claim(ctx, others); err != nil {
		return err
	}
	if err := o.deleteIdleConsumers(ctx); err != nil {
		return err
	}
	return o.drainPending(ctx)
}

// run delivers new entries until ctx is done (nil), the partition is handed over
// (errYield) or a Redis error stops it. It trims the stream every TrimInterval and adopts
// stragglers every OwnerTTL/3. While entries keep coming it pauses Linger between batches
// (none after a full one), and after a read that found nothing waits PollInterval,
// so that what arrives meanwhile goes out as one batch; after two empty reads in a row it
// waits inside Redis (XREADGROUP BLOCK, at most BlockTimeout) so that an idle partition
// costs next to nothing and the next entry goes out at once.
func (o *partition) run(ctx context.Context) error {
	r := o.r
	now := r.cfg.Clock()
	nextTrim := now.Add(backoff.Jitter(r.cfg.TrimInterval, spread))
	nextAdopt := now.Add(r.cfg.OwnerTTL / 3)
	empty := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		now = r.cfg.Clock()
		if !now.Before(nextAdopt) {
			if err := o.adoptStragglers(ctx); err != nil {
				return err
			}
			nextAdopt = now.Add(r.cfg.OwnerTTL / 3)
		}
		if r.cfg.TrimInterval > 0 && !now.Before(nextTrim) {
			n, err := r.Trim(ctx, o.p)
			if err != nil && ctx.Err() == nil {
				r.log.Warn("outbox relay: trim failed", "partition", o.p, "err", err)
			}
			r.m.trimmed(o.p, n)
			nextTrim = now.Add(r.cfg.TrimInterval)
		}
		if r.yield() {
			return errYield
		}
		block := time.Duration(-1) // no BLOCK
		if empty >= 2 {
			block = min(r.cfg.BlockTimeout, nextAdopt.Sub(now))
			if r.cfg.TrimInterval > 0 {
				block = min(block, nextTrim.Sub(now))
			}
			block = max(block, time.Millisecond)
		}
		n, err := o.readNew(ctx, block)
		switch {
		case err != nil:
			return err
		case n > 0:
			empty = 0
			if n < r.cfg.BatchSize && backoff.Wait(ctx, r.cfg.Linger) != nil {
				return nil
			}
		case block >= 0: // waited in Redis already
		default:
			if empty++; empty < 2 && backoff.Wait(ctx, r.cfg.PollInterval) != nil {
				return nil
			}
		}
	}
}

// othersPending returns how many entries consumers other than this relay hold pending.
func (o *partition) othersPending(ctx context.Context) (int64, error) {
	r := o.r
	sum, err := r.rdb.XPending(ctx, o.stream, r.cfg.Group).Result()
	if err != nil {
		return 0, fmt.Errorf("outbox: pending summary of %s: %w", o.stream, err)
	}
	var others int64
	for c, n := range sum.Consumers {
		if c != r.cfg.Owner {
			others += n
		}
	}
	return others, nil
}

// claim moves every pending entry of other consumers (earlier owners, dead or fenced off
// by the lease) to this relay's consumer with XAUTOCLAIM; others is how many there are.
//
// Claiming with a min-idle time of zero is safe only because the caller holds the
// partition's lease: no other relay of the group delivers this partition now, so no entry
// can be in flight elsewhere. Idle-time based claiming by non-owners (where a slow retry
// outlives the idle time and two workers run one message, redis/redis#13956) never happens.
func (o *partition) claim(ctx context.Context, others int64) error {
	if others == 0 {
		return nil
	}
	r := o.r
	start := "0-0"
	for {
		_, next, err := r.rdb.XAutoClaimJustID(ctx, &redis.XAutoClaimArgs{
			Stream: o.stream, Group: r.cfg.Group, Consumer: r.cfg.Owner,
			MinIdle: 0, Start: start, Count: int64(r.cfg.BatchSize),
		}).Result()
		if err != nil {
			return fmt.Errorf("outbox: autoclaim on %s: %w", o.stream, err)
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	r.m.reclaimed(o.p, others)
	r.log.Info("outbox relay: reclaimed entries of earlier owners", "partition", o.p, "entries", others)
	return nil
}

// adoptStragglers claims and delivers entries that other consumers hold pending while this
// relay owns the partition: a read of an earlier owner that returned after it lost the
// lease (a blocked XREADGROUP, or one already in flight) leaves them there, and they would
// otherwise wait for the next change of owner.
func (o *partition) adoptStragglers(ctx context.Context) error {
	others, err := o.othersPending(ctx)
	if err != nil || others == 0 {
		return err
	}
	if err := o.claim(ctx, others); err != nil {
		return err
	}
	return o.drainPending(ctx)
}

// deleteIdleConsumers deletes the group's other consumers that have nothing pending.
func (o *partition) deleteIdleConsumers(ctx context.Context) error {
	r := o.r
	consumers, err := r.rdb.XInfoConsumers(ctx, o.stream, r.cfg.Group).Result()
	if err != nil {
		return fmt.Errorf("outbox: consumers of %s: %w", o.stream, err)
	}
	for _, c := range consumers {
		if c.Name == r.cfg.Owner {
			continue
		}
		// Never delete a consumer that still has pending entries: XGROUP DELCONSUMER drops
		// them from the group for good (watermill-redisstream#24). The check and the delete
		// run in one script so nothing can slip in between.
		if err := delConsumerScript.Run(ctx, r.rdb, []string{o.stream}, r.cfg.Group, c.Name).Err(); err != nil {
			return fmt.Errorf("outbox: delete consumer %s: %w", c.Name, err)
		}
	}
	return nil
}

var delConsumerScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])`)

// drainPending redelivers the entries this relay's consumer read but never acknowledged.
func (o *partition) drainPending(ctx context.Context) error {
	last := "0-0"
	for ctx.Err() == nil {
		res, err := o.r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: o.r.cfg.Group, Consumer: o.r.cfg.Owner,
			Streams: []string{o.stream, last}, Count: int64(o.r.cfg.BatchSize), Block: -1,
		}).Result()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("outbox: read pending of %s: %w", o.stream, err)
		}
		if len(res) == 0 || len(res[0].Messages) == 0 {
			return nil
		}
		msgs := res[0].Messages
		last = msgs[len(msgs)-1].ID
		if err := o.process(ctx, msgs); err != nil {
			return err
		}
	}
	return nil
}

// readNew reads and delivers the next batch of never-delivered entries, waiting up to
// block inside Redis for one to arrive (no waiting when block is negative). It returns how
// many entries it read. Entries read after ctx was done (the lease was lost while the read
// was blocked) are not delivered: they stay pending for the next owner.
func (o *partition) readNew(ctx context.Context, block time.Duration) (int, error) {
	res, err := o.r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: o.r.cfg.Group, Consumer: o.r.cfg.Owner,
		Streams: []string{o.stream, ">"}, Count: int64(o.r.cfg.BatchSize), Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("outbox: read %s: %w", o.stream, err)
	}
	if len(res) == 0 || len(res[0].Messages) == 0 || ctx.Err() != nil {
		return 0, nil
	}
	msgs := res[0].Messages
	// Entries older than this batch may be pending without having been delivered: the reply
	// of an earlier read of ours lost on a broken connection (go-redis retried the read, and
	// the retry returned the next entries), or a read an earlier owner left blocked in Redis,
	// served after we took over. Delivering this batch first would put later versions of a
	// key before earlier ones, so deliver everything pending in stream order instead (this
	// batch is pending too).
	sum, err := o.r.rdb.XPending(ctx, o.stream, o.r.cfg.Group).Result()
	if err != nil {
		return 0, fmt.Errorf("outbox: pending summary of %s: %w", o.stream, err)
	}
	if !streamIDLess(sum.Lower, msgs[0].ID) {
		return len(msgs), o.process(ctx, msgs)
	}
	o.r.log.Info("outbox relay: older entries pending, delivering them first", "partition", o.p, "oldest", sum.Lower, "read", msgs[0].ID)
	var others int64
	for c, n := range sum.Consumers {
		if c != o.r.cfg.Owner {
			others += n
		}
	}
	if err := o.claim(ctx, others); err != nil {
		return 0, err
	}
	return len(msgs), o.drainPending(ctx)
}

// streamIDLess reports whether stream entry ID a ("ms-seq") comes before b. An ID that does
// not parse (empty: nothing pending) comes before none.
func streamIDLess(a, b string) bool {
	ams, aseq, aok := parseStreamID(a)
	bms, bseq, bok := parseStreamID(b)
	if !aok || !bok {
		return false
	}
	return ams < bms || (ams == bms && aseq < bseq)
}

func parseStreamID(id string) (ms, seq uint64, ok bool) {
	m, s, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(m, 10, 64)
	seq, err2 := strconv.ParseUint(s, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}

// process decodes a batch and delivers it. Entries that are gone from the stream are
// acknowledged; malformed entries go to the dead letters at once.
func (o *partition) process(ctx context.Context, xs []redis.XMessage) error {
	msgs := make([]Message, 0, len(xs))
	var gone []string
	for _, x := range xs {
		if len(x.Values) == 0 {
			gone = append(gone, x.ID)
			continue
		}
		m, err := DecodeEntry(x.Values)
		if err != nil {
			if err := o.deadLetter(ctx, x.ID, err.Error(), 0); err != nil {
				return err
			}
			continue
		}
		m.Partition, m.StreamID = o.p, x.ID
		msgs = append(msgs, m)
	}
	if len(gone) > 0 {
		if err := o.ack(ctx, gone); err != nil {
			return err
		}
	}
	return o.deliver(ctx, msgs)
}

// deliver hands msgs to the sinks as one batch. When the batch fails it falls back to one
// message at a time, in order, until the first message that fails on its own has been
// retried and (if it never succeeds) dead-lettered; then it continues with the rest as a
// batch. A poison message therefore holds up its partition for at most MaxAttempts
// backoffs, and later messages (of every account) keep flowing once it is dead-lettered.
func (o *partition) deliver(ctx context.Context, msgs []Message) error {
	for len(msgs) > 0 {
		if err := ctx.Err(); err != nil {
			return err // lease lost or stopping: deliver nothing more
		}
		err := o.send(ctx, msgs, make([]bool, len(o.r.cfg.Sinks)))
		if err == nil {
			return o.ack(ctx, streamIDs(msgs))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		o.r.log.Info("outbox relay: batch delivery failed, isolating", "partition", o.p, "size", len(msgs), "err", err)
		n, err := o.isolate(ctx, msgs)
		if err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// isolate delivers msgs one at a time until one of them fails on its own; it returns how
// many messages were settled (delivered or dead-lettered).
func (o *partition) isolate(ctx context.Context, msgs []Message) (int, error) {
	for i := range msgs {
		failed, err := o.deliverOne(ctx, msgs[i])
		if err != nil {
			return i, err
		}
		if failed {
			return i + 1, nil
		}
	}
	return len(msgs), nil
}

// deliverOne delivers m with retries and backoff until it succeeds, fails permanently or
// has failed MaxAttempts times (counted in Redis across owners); in the last two cases it
// moves m to the dead letters. It reports whether any attempt failed.
func (o *partition) deliverOne(ctx context.Context, m Message) (failed bool, err error) {
	r := o.r
	done := make([]bool, len(r.cfg.Sinks))
	batch := []Message{m}
	for {
		if err := ctx.Err(); err != nil {
			return failed, err
		}
		derr := o.send(ctx, batch, done)
		if derr == nil {
			return failed, o.ack(ctx, []string{m.StreamID})
		}
		if ctx.Err() != nil {
			return failed, ctx.Err()
		}
		failed = true
		r.m.failed(o.p)
		n, err := r.rdb.HIncrBy(ctx, r.attemptsKey(o.p), m.StreamID, 1).Result()
		if err != nil {
			return failed, fmt.Errorf("outbox: count attempt: %w", err)
		}
		if errors.Is(derr, ErrPermanent) || n >= int64(r.cfg.MaxAttempts) {
			r.log.Warn("outbox relay: dead-lettering message", "partition", o.p, "message", m.ID,
				"stream_id", m.StreamID, "attempts", n, "err", derr)
			return failed, o.deadLetter(ctx, m.StreamID, derr.Error(), n)
		}
		wait := r.retryDelay(n)
		r.log.Warn("outbox relay: delivery failed, will retry", "partition", o.p, "message", m.ID,
			"attempt", n, "retry_in", wait, "err", derr)
		if err := backoff.Wait(ctx, wait); err != nil {
			return failed, err
		}
	}
}

// send delivers msgs to every sink not yet marked done, in order, marking each that
// accepted them. A panicking sink counts as a failed delivery.
func (o *partition) send(ctx context.Context, msgs []Message, done []bool) error {
	for i, s := range o.r.cfg.Sinks {
		if done[i] {
			continue
		}
		if err := safeDeliver(ctx, s, msgs); err != nil {
			return fmt.Errorf("outbox: sink %d: %w", i, err)
		}
		done[i] = true
	}
	return nil
}

// ErrSinkPanic is wrapped by the delivery error of a sink that panicked.
var ErrSinkPanic = errors.New("outbox: sink panicked")

func safeDeliver(ctx context.Context, s Sink, msgs []Message) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: %v", ErrSinkPanic, v)
		}
	}()
	return s.Deliver(ctx, msgs)
}

// ack acknowledges delivered entries and forgets their failure counts (possibly recorded
// by an earlier owner), in one round trip. It runs even when the lease was lost after
// delivery: a delivered entry is done.
func (o *partition) ack(ctx context.Context, ids []string) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	pipe := o.r.rdb.Pipeline()
	pipe.XAck(actx, o.stream, o.r.cfg.Group, ids...)
	pipe.HDel(actx, o.r.attemptsKey(o.p), ids...)
	if _, err := pipe.Exec(actx); err != nil {
		return fmt.Errorf("outbox: ack on %s: %w", o.stream, err)
	}
	o.r.m.delivered(o.p, len(ids))
	return nil
}

// retryDelay returns the delay after the n-th failed delivery of an entry: RetryBackoff
// doubling up to MaxRetryBackoff, up to 20% less at random.
func (r *Relay) retryDelay(n int64) time.Duration {
	p := backoff.Policy{Base: r.cfg.RetryBackoff, Max: r.cfg.MaxRetryBackoff, Jitter: spread}
	return p.Delay(int(min(n, 1<<20)))
}

func streamIDs(msgs []Message) []string {
	ids := make([]string, len(msgs))
	for i := range msgs {
		ids[i] = msgs[i].StreamID
	}
	return ids
}
