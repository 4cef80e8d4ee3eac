package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// streamSinkScriptBatch is the most messages one script call appends, so that one call does
// not block Redis for long.
const streamSinkScriptBatch = 128

// streamSinkStride is the number of script arguments per message: the message ID followed
// by the stream fields of EntryFields.
const streamSinkStride = 9

// streamSinkScript appends each message that the dedup set has not seen to the target
// stream and marks it seen in the same script, then trims the dedup set to the newest
// Window IDs.
//
// KEYS[1] target stream, KEYS[2] dedup sorted set (message ID scored by insertion sequence).
// ARGV[1] MAXLEN for approximate trimming (0 or negative: none), ARGV[2] Window, then per message the
// message ID and the 8 values of EntryFields. Returns the number of entries appended.
const streamSinkScript = `
local maxlen = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local seq = 0
local top = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #top == 2 then seq = tonumber(top[2]) end
local added = 0
for i = 3, #ARGV, 9 do
  local id = ARGV[i]
  if not redis.call('ZSCORE', KEYS[2], id) then
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, i + 1, i + 8))
    else
      redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 8))
    end
    seq = seq + 1
    redis.call('ZADD', KEYS[2], seq, id)
    added = added + 1
  end
end
if added > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(window + 1))
end
return added
`

// StreamSinkConfig configures a StreamSink. Zero values of optional fields mean their
// defaults.
type StreamSinkConfig struct {
	// Client is the Redis (standalone or Cluster) client. Required.
	Client redis.UniversalClient
	// Stream is the key of the target stream. Required. The sink keeps its dedup set in a
	// key derived from Stream (see StreamSink.SeenKey) that is always in the same Cluster
	// slot: Stream+":seen" when Stream has a hash tag ("sink{x}" → "sink{x}:seen"), else
	// "{"+Stream+"}:seen". A key with a hash tag is the clearer choice on Cluster.
	Stream string
	// MaxLen bounds the target stream to about MaxLen entries (XADD MAXLEN ~ on every
	// append, so a little more may be kept): the oldest entries are removed whether or
	// not the stream's readers have seen them, so readers must not fall further behind.
	// Default DefaultStreamSinkMaxLen (1,000,000); negative: no bound.
	MaxLen int64
	// Window is how many of the most recently appended message IDs the dedup set remembers.
	// A redelivery of a message older than that is appended again. Default 100000.
	Window int64
}

// DefaultStreamSinkMaxLen is the default bound of a StreamSink's target stream.
const DefaultStreamSinkMaxLen = 1_000_000

// withDefaults returns c with every unset optional field set to its default.
func (c StreamSinkConfig) withDefaults() StreamSinkConfig {
	if c.MaxLen == 0 {
		c.MaxLen = DefaultStreamSinkMaxLen
	}
	if c.Window == 0 {
		c.Window = 100000
	}
	return c
}

// Validate returns an error when Client is nil, Stream is empty or has no usable dedup key
// (a key without a valid hash tag that contains '}'), or Window is negative.
func (c StreamSinkConfig) Validate() error {
	if c.Client == nil {
		return errors.New("outbox: stream sink config: Client is required")
	}
	if c.Stream == "" {
		return errors.New("outbox: stream sink config: Stream is required")
	}
	if _, err := streamSinkSeenKey(c.Stream); err != nil {
		return err
	}
	if c.Window < 0 {
		return errors.New("outbox: stream sink config: Window must not be negative")
	}
	return nil
}

// streamSinkSeenKey returns the dedup key for stream, in the same Cluster slot.
func streamSinkSeenKey(stream string) (string, error) {
	if open := strings.IndexByte(stream, '{'); open >= 0 {
		if end := strings.IndexByte(stream[open+1:], '}'); end > 0 {
			return stream + ":seen", nil // valid hash tag: the suffix keeps it
		}
	}
	if strings.IndexByte(stream, '}') >= 0 {
		return "", fmt.Errorf("outbox: stream sink config: Stream %q has no valid hash tag but contains '}'; give it a hash tag such as \"sink{x}\"", stream)
	}
	return "{" + stream + "}:seen", nil // the whole key becomes the hash tag
}

// StreamSink is a Sink that appends each message to a Redis stream, in the outbox's own
// entry format (EntryFields, with the payload unchanged; readable with DecodeEntry), exactly
// once per message ID within a bounded window: the append and the dedup mark happen in one
// Lua script, so a redelivery does not duplicate entries. It is safe for concurrent use.
type StreamSink struct {
	cfg     StreamSinkConfig
	seenKey string
	script  *redis.Script
}

// NewStreamSink returns a stream sink for cfg with defaults applied, or the error of
// cfg.Validate.
func NewStreamSink(cfg StreamSinkConfig) (*StreamSink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	seen, _ := streamSinkSeenKey(cfg.Stream)
	return &StreamSink{cfg: cfg.withDefaults(), seenKey: seen, script: redis.NewScript(streamSinkScript)}, nil
}

// SeenKey returns the key of the sink's dedup sorted set (message IDs scored by insertion
// sequence, at most Window of them).
func (s *StreamSink) SeenKey() string { return s.seenKey }

// Deliver appends the messages of msgs that were not seen before to the stream, in order, in
// script calls of up to 128 messages. It returns nil when all were appended or skipped as
// already seen. It returns an error wrapping ErrPermanent for a message without an ID or
// whose payload is not valid JSON, an error wrapping ctx.Err() when ctx is done before a
// call, and the Redis error otherwise; messages of earlier calls stay appended (a
// redelivery skips them). An empty msgs returns nil without a call.
func (s *StreamSink) Deliver(ctx context.Context, msgs []Message) error {
	for start := 0; start < len(msgs); start += streamSinkScriptBatch {
		chunk := msgs[start:min(start+streamSinkScriptBatch, len(msgs))]
		args := make([]any, 0, 2+streamSinkStride*len(chunk))
		args = append(args, s.cfg.MaxLen, s.cfg.Window)
		for i := range chunk {
			m := chunk[i]
			if m.ID == "" {
				return Permanent(fmt.Errorf("outbox: stream sink %s: message %s has no ID", s.cfg.Stream, m.StreamID))
			}
			if !json.Valid(m.Payload) {
				return Permanent(fmt.Errorf("outbox: stream sink %s: message %s: payload is not valid JSON", s.cfg.Stream, m.ID))
			}
			args = append(args, m.ID)
			args = append(args, EntryFields(m)...)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("outbox: stream sink %s: %w", s.cfg.Stream, err)
		}
		if err := s.script.Run(ctx, s.cfg.Client, []string{s.cfg.Stream, s.seenKey}, args...).Err(); err != nil {
			return fmt.Errorf("outbox: stream sink %s: %w", s.cfg.Stream, err)
		}
	}
	return nil
}
