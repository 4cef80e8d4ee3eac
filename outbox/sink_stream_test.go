package outbox

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// mustNewStreamSink returns a stream sink for cfg.
func mustNewStreamSink(t *testing.T, cfg StreamSinkConfig) *StreamSink {
	t.Helper()
	s, err := NewStreamSink(cfg)
	require.NoError(t, err)
	return s
}

// readStreamEvents returns the messages of every entry of stream, in stream order. It fails
// the test on an entry DecodeEntry rejects, one whose fields are not exactly the four of
// the outbox format, or one whose key/sequence/type fields disagree with its payload.
func readStreamEvents(t *testing.T, c redis.UniversalClient, stream string) []Message {
	t.Helper()
	entries, err := c.XRange(context.Background(), stream, "-", "+").Result()
	require.NoError(t, err)
	out := make([]Message, 0, len(entries))
	for _, x := range entries {
		m, err := DecodeEntry(x.Values)
		require.NoError(t, err)
		require.Len(t, x.Values, 4, "fields of entry %s", x.ID)
		p := testPayloadOf(t, m.Payload)
		require.Equal(t, p.ID, m.ID)
		require.Equal(t, p.Account, x.Values[FieldKey])
		require.Equal(t, fmt.Sprint(p.Version), x.Values[FieldSeq])
		require.Equal(t, p.Type, x.Values[FieldType])
		out = append(out, m)
	}
	return out
}

// streamSinkContract runs the sink contract on c with keys made by key(n).
func streamSinkContract(t *testing.T, c redis.UniversalClient, key func(n int64) string) {
	var n atomic.Int64
	runSinkContract(t, func(t *testing.T) (Sink, func() []Message) {
		stream := key(n.Add(1))
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: stream})
		// The raw stream: the sink itself must keep it free of repeats.
		return sink, func() []Message { return readStreamEvents(t, c, stream) }
	})
}

func TestStreamSinkContract(t *testing.T) {
	t.Parallel()
	c := redistest.MustStart(t).Client()
	streamSinkContract(t, c, func(n int64) string { return fmt.Sprintf("tally:sink{%d}:events", n) })
}

func TestStreamSink(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := redistest.MustStart(t).Client()

	t.Run("RedeliveryDoesNotDuplicate", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "redeliver{a}"})
		msgs := sinkTestMessages(2, 5, 0)
		for i := 0; i < 3; i++ {
			require.NoError(t, sink.Deliver(ctx, msgs))
		}
		require.NoError(t, sink.Deliver(ctx, []Message{msgs[3], msgs[3], msgs[9]}), "repeats within a batch")
		requireSameMessages(t, msgs, readStreamEvents(t, c, "redeliver{a}"))
		require.Equal(t, int64(len(msgs)), c.ZCard(ctx, sink.SeenKey()).Val())
	})

	t.Run("LargeBatchSpansScriptCalls", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "large{a}"})
		msgs := sinkTestMessages(3, 100, 0) // 300 > one script call
		require.NoError(t, sink.Deliver(ctx, msgs[:200]))
		require.NoError(t, sink.Deliver(ctx, msgs))
		requireSameMessages(t, msgs, readStreamEvents(t, c, "large{a}"))
	})

	t.Run("WindowBound", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "window{a}", Window: 10})
		msgs := sinkTestMessages(1, 25, 0)
		require.NoError(t, sink.Deliver(ctx, msgs[:20]))
		require.NoError(t, sink.Deliver(ctx, msgs[20:]))
		seen, err := c.ZRange(ctx, sink.SeenKey(), 0, -1).Result()
		require.NoError(t, err)
		require.Equal(t, sinkIDs(msgs[15:]), seen, "exactly the 10 newest IDs, oldest first")

		require.NoError(t, sink.Deliver(ctx, msgs[15:]), "redelivery inside the window")
		require.Equal(t, int64(25), c.XLen(ctx, "window{a}").Val())

		require.NoError(t, sink.Deliver(ctx, msgs[:1]), "redelivery outside the window")
		require.Equal(t, int64(26), c.XLen(ctx, "window{a}").Val(), "a message older than the window is appended again")
		require.Equal(t, int64(10), c.ZCard(ctx, sink.SeenKey()).Val())
	})

	t.Run("MaxLenTrims", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "trim{a}", MaxLen: 10})
		require.NoError(t, sink.Deliver(ctx, sinkTestMessages(4, 250, 0)))
		n := c.XLen(ctx, "trim{a}").Val()
		require.GreaterOrEqual(t, n, int64(10))
		require.Less(t, n, int64(1000), "MAXLEN ~ trims by whole nodes")
		require.Equal(t, int64(1000), c.ZCard(ctx, sink.SeenKey()).Val(), "trimming the stream keeps the dedup window")
	})

	t.Run("NegativeMaxLenKeepsAll", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "keep{a}", MaxLen: -1})
		require.NoError(t, sink.Deliver(ctx, sinkTestMessages(4, 250, 0)))
		require.Equal(t, int64(1000), c.XLen(ctx, "keep{a}").Val())
	})

	t.Run("MessageWithoutIDIsPermanent", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "noid{a}"})
		msgs := sinkTestMessages(1, 2, 0)
		msgs[1].ID = ""
		require.ErrorIs(t, sink.Deliver(ctx, msgs), ErrPermanent)
		require.Zero(t, c.XLen(ctx, "noid{a}").Val(), "a rejected batch appends nothing")
	})

	t.Run("InvalidPayloadIsPermanent", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "badjson{a}"})
		msgs := sinkTestMessages(1, 2, 0)
		msgs[1].Payload = []byte(`{not json`)
		require.ErrorIs(t, sink.Deliver(ctx, msgs), ErrPermanent)
		require.Zero(t, c.XLen(ctx, "badjson{a}").Val(), "a rejected batch appends nothing")
	})

	t.Run("PayloadForwardedByteForByte", func(t *testing.T) {
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "bytes{a}"})
		m := sinkTestMessages(1, 1, 0)[0]
		m.Payload = []byte(`{"id":"acct-0-0:1", "spaced" : [1, 2],"html":"<&>"}`)
		require.NoError(t, sink.Deliver(ctx, []Message{m}))
		xs, err := c.XRange(ctx, "bytes{a}", "-", "+").Result()
		require.NoError(t, err)
		require.Len(t, xs, 1)
		require.Equal(t, string(m.Payload), xs[0].Values[FieldPayload], "not re-encoded")
	})

	t.Run("RedisErrorIsWrapped", func(t *testing.T) {
		require.NoError(t, c.Set(ctx, "wrongtype{a}", "x", 0).Err())
		sink := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "wrongtype{a}"})
		err := sink.Deliver(ctx, sinkTestMessages(1, 1, 0))
		require.ErrorContains(t, err, "outbox: stream sink wrongtype{a}: ")
		require.ErrorContains(t, err, "WRONGTYPE")
		require.NotErrorIs(t, err, ErrPermanent)
	})
}

func TestStreamSinkCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cc := redistest.MustStartCluster(t).Client()

	t.Run("Contract", func(t *testing.T) {
		streamSinkContract(t, cc, func(n int64) string { return fmt.Sprintf("tally:sink{%d}:events", n) })
	})

	// Keys spread over the cluster's masters, with and without a hash tag.
	for _, stream := range []string{"tally:{sink}:events", "plain-sink", "{open", "a}b{c}", "x{y}"} {
		t.Run("Key="+stream, func(t *testing.T) {
			sink := mustNewStreamSink(t, StreamSinkConfig{Client: cc, Stream: stream, Window: 50})
			streamSlot, err := cc.ClusterKeySlot(ctx, stream).Result()
			require.NoError(t, err)
			seenSlot, err := cc.ClusterKeySlot(ctx, sink.SeenKey()).Result()
			require.NoError(t, err)
			require.Equal(t, streamSlot, seenSlot, "dedup key %s in the stream's slot", sink.SeenKey())

			msgs := sinkTestMessages(3, 10, 0)
			require.NoError(t, sink.Deliver(ctx, msgs))
			require.NoError(t, sink.Deliver(ctx, msgs[10:]))
			requireSameMessages(t, msgs, readStreamEvents(t, cc, stream))
		})
	}
}

func TestStreamSinkConfig(t *testing.T) {
	t.Parallel()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { c.Close() })

	for stream, want := range map[string]string{
		"sink{x}":    "sink{x}:seen",
		"sink":       "{sink}:seen",
		"a}b{c}":     "a}b{c}:seen",
		"tally:{3}:": "tally:{3}::seen",
	} {
		s := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: stream})
		require.Equal(t, want, s.SeenKey(), "seen key of %q", stream)
	}

	for name, cfg := range map[string]StreamSinkConfig{
		"NoClient":       {Stream: "s{x}"},
		"NoStream":       {Client: c},
		"EmptyTag":       {Client: c, Stream: "{}sink{x}"},
		"NegativeWindow": {Client: c, Stream: "s{x}", Window: -1},
	} {
		t.Run(name, func(t *testing.T) {
			require.Error(t, cfg.Validate())
			_, err := NewStreamSink(cfg)
			require.ErrorContains(t, err, "outbox: stream sink config: ")
		})
	}

	s := mustNewStreamSink(t, StreamSinkConfig{Client: c, Stream: "s{x}"})
	require.Equal(t, int64(100000), s.cfg.Window, "default window")
	require.Equal(t, int64(DefaultStreamSinkMaxLen), s.cfg.MaxLen, "the target stream is bounded by default")
}
