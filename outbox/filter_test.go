package outbox

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

func TestFilterMatch(t *testing.T) {
	msg := func(key, typ string) Message { return Message{Key: key, Type: typ} }
	for _, tc := range []struct {
		name   string
		f      Filter
		yes    []Message
		no     []Message
		isZero bool
	}{
		{name: "empty selects all", f: Filter{}, isZero: true,
			yes: []Message{msg("a", "X"), msg("b", ""), msg("shop1..a", "Y")}},
		{name: "types", f: Filter{Types: []string{"X", "Y"}},
			yes: []Message{msg("a", "X"), msg("b", "Y")},
			no:  []Message{msg("a", "Z"), msg("a", ""), msg("a", "x")}},
		{name: "key prefix", f: Filter{KeyPrefix: "shop1.."},
			yes: []Message{msg("shop1..a", "X"), msg("shop1..", "Y")},
			no:  []Message{msg("shop2..a", "X"), msg("shop1", "X"), msg("xshop1..a", "X")}},
		{name: "both", f: Filter{Types: []string{"X"}, KeyPrefix: "shop1.."},
			yes: []Message{msg("shop1..a", "X")},
			no:  []Message{msg("shop1..a", "Y"), msg("shop2..a", "X")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.isZero, tc.f.IsZero())
			for _, m := range tc.yes {
				require.True(t, tc.f.Match(m), "%+v selects %+v", tc.f, m)
			}
			for _, m := range tc.no {
				require.False(t, tc.f.Match(m), "%+v leaves out %+v", tc.f, m)
			}
		})
	}
}

func TestFilteredSink(t *testing.T) {
	ctx := context.Background()
	var calls [][]string
	var sink funcSink = func(_ context.Context, msgs []Message) error {
		var ids []string
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		calls = append(calls, ids)
		return nil
	}
	batch := []Message{
		{ID: "a:1", Key: "a", Type: "X"}, {ID: "b:1", Key: "b", Type: "X"},
		{ID: "a:2", Key: "a", Type: "Y"}, {ID: "a:3", Key: "a", Type: "X"},
	}
	orig := append([]Message(nil), batch...)
	types := []string{"X"}
	f := Filtered(sink, Filter{Types: types, KeyPrefix: "a"})
	types[0] = "Y" // the filter keeps its own copy

	require.NoError(t, f.Deliver(ctx, batch))
	require.NoError(t, f.Deliver(ctx, batch[1:3])) // nothing selected: no call
	require.NoError(t, f.Deliver(ctx, batch[3:4])) // all selected
	require.NoError(t, f.Deliver(ctx, batch[:1]))  // all selected
	require.Equal(t, [][]string{{"a:1", "a:3"}, {"a:3"}, {"a:1"}}, calls)
	require.Equal(t, orig, batch, "the relay's batch is left as it was")

	fail := Filtered(funcSink(func(context.Context, []Message) error { return ErrPermanent }), Filter{Types: []string{"X"}})
	require.ErrorIs(t, fail.Deliver(ctx, batch), ErrPermanent, "a selected message's failure is the sink's")
	require.NoError(t, fail.Deliver(ctx, batch[2:3]), "a message the filter leaves out never fails")

	_, wrapped := Filtered(sink, Filter{}).(filteredSink)
	require.False(t, wrapped, "a zero filter adds nothing")
}

// TestRelayFilteredSubscription runs a relay with a filtered webhook and an unfiltered
// stream sink on real Redis: the webhook receives exactly the events its filter selects, in
// per-key order, the stream every event; nothing is retried or dead-lettered for the
// left-out events; and a restarted relay does not deliver an acknowledged event again.
func TestRelayFilteredSubscription(t *testing.T) {
	rdb := redistest.MustStart(t).Client()
	const partitions = 4
	types := []string{"AccountOpened", "Deposited", "Withdrawn", "HoldPlaced"}
	next := map[string]int64{}
	write := func(rounds int) []Message {
		var msgs []Message
		for r := 0; r < rounds; r++ {
			for _, key := range []string{"shop1..a", "shop1..b", "shop2..a", "zed"} {
				next[key]++
				v := next[key]
				msgs = append(msgs, newTestMessage(key, v, types[(v-1)%int64(len(types))], time.Now().UTC(), `{}`))
			}
		}
		xaddEvents(t, rdb, DefaultPrefix, partitions, msgs)
		return msgs
	}
	filter := Filter{Types: []string{"Deposited", "HoldPlaced"}, KeyPrefix: "shop1.."}
	want := func(msgs []Message) []string {
		var ids []string
		for _, m := range msgs {
			if filter.Match(m) {
				ids = append(ids, m.ID)
			}
		}
		return ids
	}

	// The receiver refuses (400: permanent, dead-lettered at once) any event the filter
	// should have left out, so a leak would show in the dead letters as well.
	rc := mustStartWebhookReceiver(t, []byte("s3cret"), nil)
	webhook := Filtered(refuseUnselected{mustNewWebhookSink(t, fastWebhookConfig(rc)), filter}, filter)
	stream := mustNewStreamSink(t, StreamSinkConfig{Client: rdb, Stream: "filtered-test:all"})
	newRelay := func(owner string) *Relay {
		r, err := NewRelay(rdb, newTestLeaser(rdb, owner, nil), testConfig(t, partitions, owner, webhook, stream))
		require.NoError(t, err)
		return r
	}

	first := write(10)
	r1 := newRelay("relay-a")
	stop := startRelay(t, r1)
	waitDelivered(t, r1)
	stop()
	second := write(10)
	r2 := newRelay("relay-b")
	startRelay(t, r2)
	waitDelivered(t, r2)

	all := append(first, second...)
	var got []string
	perKey := map[string]int64{}
	for _, m := range rc.appliedRaw() {
		got = append(got, m.ID)
		require.Greater(t, m.Seq, perKey[m.Key], "per-key order: %s", m.ID)
		perKey[m.Key] = m.Seq
	}
	require.ElementsMatch(t, want(all), got, "the webhook got exactly the selected events, once each (none again after the restart)")
	require.Len(t, got, 20, "versions 2, 4, ..., 20 of shop1..a and shop1..b (Deposited, HoldPlaced)")
	require.Empty(t, rc.problemList())

	var streamed []string
	for _, m := range readStreamEvents(t, rdb, "filtered-test:all") {
		streamed = append(streamed, m.ID)
	}
	var allIDs []string
	for _, m := range all {
		allIDs = append(allIDs, m.ID)
	}
	require.ElementsMatch(t, allIDs, streamed, "the unfiltered stream sink got every event")

	ctx := context.Background()
	for p := 0; p < partitions; p++ {
		n, err := rdb.XLen(ctx, DeadLetterKey(DefaultPrefix, p)).Result()
		require.NoError(t, err)
		require.Zero(t, n, "dead letters of partition %d", p)
		require.Zero(t, rdb.Exists(ctx, r2.attemptsKey(p)).Val(), "no failed attempt counted in partition %d", p)
	}
}

// refuseUnselected is a sink that fails permanently for a message its filter does not
// select, and passes the others to sink: behind Filtered with the same filter it never
// fails on that account.
type refuseUnselected struct {
	sink Sink
	f    Filter
}

func (s refuseUnselected) Deliver(ctx context.Context, msgs []Message) error {
	for _, m := range msgs {
		if !s.f.Match(m) {
			return Permanent(fmt.Errorf("message %s (%s) leaked through the filter", m.ID, m.Type))
		}
	}
	return s.sink.Deliver(ctx, msgs)
}
