package outbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Defaults for DedupConfig.
const (
	DefaultDedupWindow  = 100_000
	DefaultDedupMaxGaps = 100
)

// DedupConfig configures a Dedup.
type DedupConfig struct {
	// Prefix is the first component of every key. Default "tally".
	Prefix string
	// Name identifies the consumer; consumers with different names deduplicate
	// independently. Required; it must not contain '{' or '}'.
	Name string
	// Window is how many message IDs are remembered per partition; older IDs are evicted.
	// Default 100,000. Messages older than the window are still rejected by the sequence
	// watermark.
	Window int
	// MaxGaps bounds the skipped sequence numbers remembered per key (see Dedup). Default 100.
	MaxGaps int
	// WatermarkOnly deduplicates versioned messages (Seq > 0) by their key's watermark and
	// gaps alone: they leave no ID in the window, and one at or below the watermark that is
	// not a recorded gap is a Duplicate (Stale is then never returned for them). Which
	// messages apply is the same either way (see Dedup); the window only tells an old
	// redelivery (Stale) from a recent one (Duplicate). It saves the window's Redis memory,
	// ~110 B per ID (~11 MB per partition at the default Window), and a ZADD per message.
	// Unversioned messages (Seq 0) still use the window. Every message the Relay delivers is
	// versioned.
	WatermarkOnly bool
}

func (c DedupConfig) withDefaults() DedupConfig {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Window == 0 {
		c.Window = DefaultDedupWindow
	}
	if c.MaxGaps == 0 {
		c.MaxGaps = DefaultDedupMaxGaps
	}
	return c
}

// Validate applies the defaults and reports the first invalid field, wrapping
// ErrInvalidConfig.
func (c DedupConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: dedup Name is required", ErrInvalidConfig)
	case strings.ContainsAny(c.Name, "{}") || strings.ContainsAny(c.Prefix, "{}"):
		return fmt.Errorf("%w: dedup Name and Prefix must not contain '{' or '}'", ErrInvalidConfig)
	case c.Window < 1:
		return fmt.Errorf("%w: dedup Window %d < 1", ErrInvalidConfig, c.Window)
	case c.MaxGaps < 0:
		return fmt.Errorf("%w: dedup MaxGaps %d < 0", ErrInvalidConfig, c.MaxGaps)
	}
	return nil
}

// Outcome is what Dedup did with one message.
type Outcome int

// Outcomes of Dedup.Apply.
const (
	// Applied: the effect ran and the message is now marked processed.
	Applied Outcome = iota + 1
	// Duplicate: the message ID is in the window; nothing ran.
	Duplicate
	// Stale: the message's sequence is at or below its key's watermark and is not a
	// recorded gap (an old redelivery whose ID already left the window); nothing ran.
	Stale
)

// String returns "applied", "duplicate" or "stale".
func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Duplicate:
		return "duplicate"
	case Stale:
		return "stale"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Effect is a consumer's Redis-side effect: a Lua body that Dedup runs inside its own
// script, between the duplicate check and the processed mark, so that the effect and the
// mark commit together or not at all. The body sees its own KEYS and ARGV (those given in
// the Op) and may return a value; it must only touch keys of the message's partition (hash
// tag {p}) so that it works on Redis Cluster. If it raises an error (a failing redis.call,
// error()) or returns redis.error_reply(...), the script stops before the mark is written.
// Redis does not roll back writes a script made before an error, so a body should check
// before it writes. A Lua error names the line of the body ("effect line 3: ...").
//
// An effect made by NewBatchEffect also has a finish: Lua that runs once per ApplyBatch
// call, after the bodies of the applied messages and before their marks are written, also
// when a later message's body failed (the messages before it are marked, so what they
// left for the finish must be written). Bodies and finish share the table BATCH, empty at
// the start of each call: a body can gather its writes there (sums of counters, the last
// value of a field) and the finish write them once per call instead of once per message.
// A body should then check before it gathers. If the finish fails, no mark is written
// and what it wrote stays ("finish line 2: ...").
type Effect struct {
	script *redis.Script
}

// NoEffect marks messages processed without any Redis-side effect (see Dedup.Mark).
var NoEffect = NewEffect("return nil")

// NewEffect compiles an effect body (see Effect).
func NewEffect(body string) *Effect { return NewBatchEffect(body, "") }

// NewBatchEffect compiles an effect body and its finish (see Effect).
func NewBatchEffect(body, finish string) *Effect {
	before := dedupHead + body + "\nend\n"
	finishLines := strings.Count(before, "\n") + 2 // and the two lines below
	script := before + "local finishLines = " + strconv.Itoa(finishLines) + "\nlocal finish = function()\n" +
		finish + "\nend" + dedupScriptTail
	return &Effect{script: redis.NewScript(script)}
}

// The dedup script handles a batch of messages of one partition.
// KEYS: ids (zset), seq (counter), watermarks (hash); then per message: gaps (zset), its
// effect keys. ARGV: window, maxgaps, count, watermark only ("1" or "0"); then per
// message: message id, key, sequence, #effect keys, #effect args, effect args.
// It returns one outcome per message: 1 applied, 2 duplicate, 3 stale.
//
// It is written for few Redis calls per message (Redis is what replicas do not scale):
//   - a versioned message reads its key's watermark first (once per key and batch) and
//     checks the ID window only when its Seq is at or below it: a Seq above the watermark
//     was never applied (see Dedup on why); with watermark only it never uses the window;
//   - the marks of the batch (window IDs and watermarks) are written together, one ZADD
//     and one HSET, after the loop or before the script returns or raises an effect's
//     error, so that the messages before a failing one are marked as before; the messages
//     of the batch see the marks of the ones before them through Lua tables meanwhile;
//   - the score counter is raised once per batch, by the number of marks: scores only need
//     to grow in the order of the marks (the eviction order);
//   - the window is trimmed once per batch, without a ZCARD (a negative end rank). The
//     duplicate check counts the unwritten marks in front of the stored IDs' ranks, so it
//     sees exactly the window a trim after every mark would keep;
//   - the new gaps of a message are added in one ZADD and trimmed without a ZCARD.
const dedupScriptHead = `
local window, maxgaps, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wmOnly = ARGV[4] == '1'
local ids, seq, wms = KEYS[1], KEYS[2], KEYS[3]
local out = {}
local ki, ai = 4, 5
local BATCH = {} -- what the effects of this call leave for the finish
local headLines = %d -- the script's lines before the effect's body: errors name body lines
local effect = function(KEYS, ARGV)
`

// dedupHead is dedupScriptHead with its line count filled in.
var dedupHead = fmt.Sprintf(dedupScriptHead, strings.Count(dedupScriptHead, "\n"))

// dedupScriptTail follows the finish (see NewBatchEffect).
const dedupScriptTail = `
-- raise an error of the effect's body or of the finish as it came, naming their own line:
-- a Lua error names the line of the whole script ("user_script:9: ..."; an embedded Redis
-- leaves the name out); a failed redis.call's error starts with its error code (WRONGTYPE
-- ...), which a table keeps; Redis prefixes other errors with ERR
local raise = function(r, lines, what)
  if type(r) == 'string' then
    r = string.gsub(r, '^[^:]*:(%d+): ', function(n) return what .. ' line ' .. (tonumber(n) - lines) .. ': ' end, 1)
    if string.find(r, '^%u+ ') then error({err = r}) end
  end
  error(r, 0)
end
local marked, markOf = {}, {} -- IDs marked in this batch, in order, not written yet; index by ID
local wmOf = {} -- watermarks read or set in this batch, by key
local wmSet, isSet = {}, {} -- keys whose watermark the batch set, in order
-- whether id is among the window newest IDs, the unwritten marks first
local inWindow = function(id)
  local i = markOf[id]
  if i then return #marked - i < window end
  local r = redis.call('ZREVRANK', ids, id)
  return r ~= false and r ~= nil and r + #marked < window
end
-- run the finish, then write the batch's marks: the IDs with growing scores, then the
-- window trim; the watermarks
local flush = function()
  local ok, r = pcall(finish)
  if not ok then raise(r, finishLines, 'finish') end
  if type(r) == 'table' and r.err then error(r) end
  if #marked > 0 then
    local base = redis.call('INCRBY', seq, #marked) - #marked
    local zs = {}
    for i, id in ipairs(marked) do
      zs[#zs + 1] = base + i
      zs[#zs + 1] = id
    end
    -- in slices: unpack has a stack limit
    for i = 1, #zs, 1000 do redis.call('ZADD', ids, unpack(zs, i, math.min(i + 999, #zs))) end
    redis.call('ZREMRANGEBYRANK', ids, 0, -window - 1)
  end
  local hs = {}
  for _, k in ipairs(wmSet) do
    hs[#hs + 1] = k
    hs[#hs + 1] = wmOf[k]
  end
  for i = 1, #hs, 1000 do redis.call('HSET', wms, unpack(hs, i, math.min(i + 999, #hs))) end
end
for m = 1, count do
  local id, acct, v = ARGV[ai], ARGV[ai + 1], tonumber(ARGV[ai + 2])
  local nk, na = tonumber(ARGV[ai + 3]), tonumber(ARGV[ai + 4])
  local gaps = KEYS[ki]
  local ek, ea = {}, {}
  for i = 1, nk do ek[i] = KEYS[ki + i] end
  for i = 1, na do ea[i] = ARGV[ai + 4 + i] end
  ki, ai = ki + 1 + nk, ai + 5 + na
  local outcome = 1
  local gap = false
  local wm = 0
  if v > 0 then
    wm = wmOf[acct]
    if wm == nil then
      wm = tonumber(redis.call('HGET', wms, acct) or '0')
      wmOf[acct] = wm
    end
    -- above the watermark: never applied, no window check
    if v <= wm then
      if not wmOnly and inWindow(id) then outcome = 2
      elseif redis.call('ZSCORE', gaps, v) then gap = true
      elseif wmOnly then outcome = 2
      else outcome = 3 end
    end
  elseif inWindow(id) then
    outcome = 2
  end
  if outcome == 1 then
    local ok, r = pcall(effect, ek, ea)
    if not ok then
      flush()
      raise(r, headLines, 'effect')
    end
    if type(r) == 'table' and r.err then
      flush()
      return r
    end
    -- the mark, only after the effect succeeded
    if v == 0 or not wmOnly then
      marked[#marked + 1] = id
      markOf[id] = #marked
    end
    if gap then
      redis.call('ZREM', gaps, v)
    elseif v > 0 then
      local from = math.max(wm + 1, v - maxgaps)
      local zs = {}
      for g = from, v - 1 do
        zs[#zs + 1] = g
        zs[#zs + 1] = g
        if #zs == 1000 or g == v - 1 then
          redis.call('ZADD', gaps, unpack(zs))
          zs = {}
        end
      end
      if v - 1 >= from then redis.call('ZREMRANGEBYRANK', gaps, 0, -maxgaps - 1) end
      if not isSet[acct] then
        wmSet[#wmSet + 1] = acct
        isSet[acct] = true
      end
      wmOf[acct] = v
    end
  end
  out[m] = outcome
end
flush()
return out`

// Op is one message for Dedup.ApplyBatch with the effect's keys and arguments.
type Op struct {
	Msg  Message
	Keys []string // effect keys; each must carry the message's partition hash tag
	Args []any    // effect arguments
}

// DedupStats counts the outcomes a Dedup saw in this process.
type DedupStats struct {
	Applied, Duplicates, Stale int64
}

// Dedup makes a consumer apply each message exactly once although delivery is at-least-once.
//
// Per partition it keeps a window of the last Window message IDs it processed, and per key
// a sequence watermark: the highest Seq applied. A message is a duplicate when its ID is in
// the window, and stale when its Seq is at or below the watermark, unless that Seq is a
// recorded gap: when Seq s arrives with the watermark at w < s-1, the sequence numbers in
// between (at most MaxGaps of them) are remembered as gaps and accepted once when they
// arrive later (for example a dead letter replayed after later messages of its key).
// Messages with Seq 0 are deduplicated by ID only.
//
// A message's ID must identify its Key and Seq: two messages with one ID have the same Key
// and Seq. (Every outbox message does: its ID is MessageID(Key, Seq), which DecodeEntry
// sets, and redeliveries and replayed dead letters decode the same entry.) Dedup relies on
// it to skip the window for a message whose Seq is above its key's watermark: the
// watermark only grows and every applied message leaves it at or above its Seq, so such a
// message was never applied. A consumer that gives one ID to messages of other keys or
// sequences gets wrong outcomes. For the same reason a versioned message at or below the
// watermark applies exactly when its Seq is a recorded gap, whether or not its ID is in the
// window: the window only sorts the others into Duplicate and Stale, and
// DedupConfig.WatermarkOnly does without it.
//
// An ApplyBatch writes its marks together when it ends (or an effect fails) and trims the
// window then; within the batch the duplicate check counts the batch's marks in front of
// the stored IDs, so a message sees the Window newest IDs as if each had been written and
// trimmed at once. (A Window lowered between runs takes effect at once, not at the
// partition's next mark.)
//
// For effects in Redis use Apply/ApplyBatch: the duplicate check, the effect and the mark
// run in one Lua script (the mark is never written before the effect, and never without
// it). Keys live under the message's partition hash tag, so everything is one slot.
type Dedup struct {
	rdb   redis.UniversalClient
	cfg   DedupConfig
	stats struct{ applied, dup, stale atomic.Int64 }
}

// NewDedup returns a Dedup over rdb. It returns an error wrapping ErrInvalidConfig when cfg
// is invalid or rdb is nil.
func NewDedup(rdb redis.UniversalClient, cfg DedupConfig) (*Dedup, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrInvalidConfig)
	}
	return &Dedup{rdb: rdb, cfg: cfg.withDefaults()}, nil
}

// Key returns the key "<prefix>:{p}:<name>:<suffix>": a key of partition p in this
// consumer's namespace, for effect keys.
func (d *Dedup) Key(p int, suffix string) string {
	// not fmt.Sprintf: the projector builds four keys per event
	return d.cfg.Prefix + ":{" + strconv.Itoa(p) + "}:" + d.cfg.Name + ":" + suffix
}

func (d *Dedup) idsKey(p int) string            { return d.Key(p, "dedup:ids") }
func (d *Dedup) seqKey(p int) string            { return d.Key(p, "dedup:seq") }
func (d *Dedup) watermarkKey(p int) string      { return d.Key(p, "dedup:wm") }
func (d *Dedup) gapsKey(p int, a string) string { return d.Key(p, "dedup:gaps:"+a) }

// ErrMixedPartitions is returned by ApplyBatch for messages of more than one partition.
var ErrMixedPartitions = errors.New("outbox: dedup batch spans partitions")

// Apply runs eff for m unless m is a duplicate or stale, and marks m processed in the same
// script. It returns the outcome, or an error (the effect's error included) in which case
// m is not marked.
func (d *Dedup) Apply(ctx context.Context, m Message, eff *Effect, keys []string, args ...any) (Outcome, error) {
	out, err := d.ApplyBatch(ctx, eff, []Op{{Msg: m, Keys: keys, Args: args}})
	if err != nil {
		return 0, err
	}
	return out[0], nil
}

// ApplyBatch applies ops in order in one script call (one round trip); all messages must be
// of one partition (ErrMixedPartitions otherwise). On an error (for example the effect of
// one op failed) the ops before the failing one are applied and marked, the failing one
// is not marked and the rest did not run; retrying the whole batch is safe.
func (d *Dedup) ApplyBatch(ctx context.Context, eff *Effect, ops []Op) ([]Outcome, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	p := ops[0].Msg.Partition
	keys := []string{d.idsKey(p), d.seqKey(p), d.watermarkKey(p)}
	wmOnly := "0"
	if d.cfg.WatermarkOnly {
		wmOnly = "1"
	}
	args := []any{d.cfg.Window, d.cfg.MaxGaps, len(ops), wmOnly}
	for _, op := range ops {
		if op.Msg.Partition != p {
			return nil, ErrMixedPartitions
		}
		m := op.Msg
		keys = append(keys, d.gapsKey(p, m.Key))
		keys = append(keys, op.Keys...)
		args = append(args, m.ID, m.Key, m.Seq, len(op.Keys), len(op.Args))
		args = append(args, op.Args...)
	}
	res, err := eff.script.Run(ctx, d.rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("outbox: dedup apply: %w", err)
	}
	if len(res) != len(ops) {
		return nil, fmt.Errorf("outbox: dedup apply: %d results for %d messages", len(res), len(ops))
	}
	out := make([]Outcome, len(res))
	for i, r := range res {
		out[i] = Outcome(r)
		switch out[i] {
		case Applied:
			d.stats.applied.Add(1)
		case Duplicate:
			d.stats.dup.Add(1)
		case Stale:
			d.stats.stale.Add(1)
		}
	}
	return out, nil
}

// Mark records m as processed without a Redis-side effect, for consumers whose effect
// lives elsewhere: call it only after the effect succeeded (never before: a crash in
// between would lose the message). Between the effect and Mark a crash causes a redelivery,
// so such an effect must itself tolerate a repeat. It returns the outcome (Duplicate or
// Stale when m was already marked).
func (d *Dedup) Mark(ctx context.Context, m Message) (Outcome, error) {
	return d.Apply(ctx, m, NoEffect, nil)
}

var seenScript = redis.NewScript(`
local r = redis.call('ZREVRANK', KEYS[1], ARGV[1])
if r ~= false and r ~= nil and r < tonumber(ARGV[4]) then return 2 end
local v = tonumber(ARGV[3])
if v > 0 and v <= tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') then
  if redis.call('ZSCORE', KEYS[3], v) then return 0 end
  return 3
end
return 0`)

// Seen reports whether m was already processed (it would be a Duplicate or Stale). It is a
// read for consumers whose effect is outside Redis; see Mark.
func (d *Dedup) Seen(ctx context.Context, m Message) (bool, error) {
	p := m.Partition
	n, err := seenScript.Run(ctx, d.rdb, []string{d.idsKey(p), d.watermarkKey(p), d.gapsKey(p, m.Key)},
		m.ID, m.Key, m.Seq, d.cfg.Window).Int()
	if err != nil {
		return false, fmt.Errorf("outbox: dedup seen: %w", err)
	}
	return n != 0, nil
}

// Watermark returns the highest sequence number of key applied in partition p (0 if none).
func (d *Dedup) Watermark(ctx context.Context, p int, key string) (int64, error) {
	v, err := d.rdb.HGet(ctx, d.watermarkKey(p), key).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("outbox: dedup watermark: %w", err)
	}
	return v, nil
}

// Stats returns the outcomes counted by this Dedup value since it was created.
func (d *Dedup) Stats() DedupStats {
	return DedupStats{Applied: d.stats.applied.Load(), Duplicates: d.stats.dup.Load(), Stale: d.stats.stale.Load()}
}
