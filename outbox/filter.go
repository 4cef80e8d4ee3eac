package outbox

import (
	"context"
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
	if len(f.Types) == 0 {
		return true
	}
	for _, t := range f.Types {
		if m.Type == t {
			return true
		}
	}
	return false
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
	var sel []Message
	for i, m := range msgs {
		if s.f.Match(m) {
			if sel != nil {
				sel = append(sel, m)
			}
			continue
		}
		if sel == nil {
			sel = make([]Message, i, len(msgs))
			copy(sel, msgs[:i])
		}
	}
	switch {
	case sel == nil:
		sel = msgs // every message selected
	case len(sel) == 0:
		return nil
	}
	return s.sink.Deliver(ctx, sel)
}
