package outbox

import (
	"context"
	"slices"
	"strings"
)

// Filter selects messages by their generic parts: Type and Key. The zero Filter selects
// every message.
type Filter struct {
	// Types are the message types selected; empty selects every type.
	Types []string
	// KeyPrefix selects messages whose Key starts with it; empty selects every key.
	KeyPrefix string
}

// Match reports whether f selects m: its Type is one of Types (or Types is empty) and its
// Key starts with KeyPrefix.
func (f Filter) Match(m Message) bool {
	if !strings.HasPrefix(m.Key, f.KeyPrefix) {
		return false
	}
	return len(f.Types) == 0 || slices.Contains(f.Types, m.Type)
}

// IsZero reports whether f selects every message.
func (f Filter) IsZero() bool { return len(f.Types) == 0 && f.KeyPrefix == "" }

// Filtered returns a Sink that hands sink only the messages f selects, in their order. The
// others count as delivered for that sink: the relay acknowledges them once every sink
// accepted the batch, so they are never retried or dead-lettered on its account and still
// reach every other sink. A batch with nothing selected does not call sink at all. A zero
// f returns sink itself.
//
// Like retries and panic recovery, the selection is composed around a sink rather than
// built into one, so every Sink (webhook, stream, in-process) can be filtered the same way.
func Filtered(sink Sink, f Filter) Sink {
	if f.IsZero() {
		return sink
	}
	f.Types = append([]string(nil), f.Types...) // the caller's slice may change later
	return filteredSink{sink: sink, f: f}
}

type filteredSink struct {
	sink Sink
	f    Filter
}

// Deliver passes the selected messages on. When every message is selected it passes msgs
// itself, so an unfiltered batch costs no copy.
func (s filteredSink) Deliver(ctx context.Context, msgs []Message) error {
	if !slices.ContainsFunc(msgs, s.skips) {
		return s.sink.Deliver(ctx, msgs)
	}
	sel := slices.DeleteFunc(slices.Clone(msgs), s.skips)
	if len(sel) == 0 {
		return nil
	}
	return s.sink.Deliver(ctx, sel)
}

// skips reports whether the filter leaves m out.
func (s filteredSink) skips(m Message) bool { return !s.f.Match(m) }
