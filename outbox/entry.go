// Package outbox owns the transactional outbox: the entry format a producer writes into one
// Redis stream per partition, the relay that delivers those entries to sinks, the dead
// letters, and the deduplication consumers use to apply each message exactly once.
//
// It is generic infrastructure: it knows entries, streams, partitions, ordering keys,
// per-key sequences and JSON payloads, never what a payload means. Tally's ledger is the
// producer (its commit script writes the entries) and owns the event type and the domain
// consumers (package ledger: Event, DecodeEvent, Projector, TransferManager).
package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Outbox stream entry field names. A producer writes exactly these fields (the ledger's
// commit script does, in this order). The names are the wire format of stored entries and
// predate the generic wording: the payload is in "event", the ordering key in "account" and
// the sequence in "version".
const (
	FieldPayload = "event"   // the payload JSON, delivered to sinks unchanged
	FieldKey     = "account" // the ordering key (Message.Key)
	FieldSeq     = "version" // the per-key sequence (Message.Seq) as a decimal string
	FieldType    = "type"    // the payload's type (Message.Type), for filtering without decoding
)

// ErrMalformedEntry is returned by DecodeEntry for an outbox entry it cannot turn into a
// Message. The relay moves such entries to the dead letters at once.
var ErrMalformedEntry = errors.New("outbox: malformed entry")

// Message is one outbox entry as the relay hands it to sinks: where it is stored and the
// entry's generic parts. Messages of one Key are delivered in Seq order (see Relay).
type Message struct {
	Partition int    // partition whose outbox stream holds the entry
	StreamID  string // ID of the entry in that outbox stream
	// ID identifies the message for deduplication: MessageID(Key, Seq), the same on every
	// redelivery and replay. (The ledger's event ID is the same string.)
	ID string
	// Key is the ordering key: messages of one key keep their order (the ledger's account).
	Key string
	// Seq is the message's sequence number within Key, from 1 without gaps as the producer
	// writes them (the account's version). Dedup keeps a watermark per key on it.
	Seq int64
	// Type is the payload's type as the producer named it (the ledger's event type).
	Type string
	// Payload is the payload JSON exactly as the producer wrote it; sinks forward it byte
	// for byte (the webhook body, the stream sink's entries).
	Payload json.RawMessage
}

// MessageID returns the ID of the message with sequence seq of key: "<key>:<seq>".
func MessageID(key string, seq int64) string {
	return key + ":" + strconv.FormatInt(seq, 10)
}

// StreamKey returns the key of partition p's outbox stream. The {p} hash tag keeps it in the
// same Redis Cluster slot as every other key of the partition.
func StreamKey(prefix string, p int) string {
	return fmt.Sprintf("%s:{%d}:outbox", prefix, p)
}

// DeadLetterKey returns the key of partition p's dead-letter stream.
func DeadLetterKey(prefix string, p int) string {
	return fmt.Sprintf("%s:{%d}:outbox:dead", prefix, p)
}

// EntryFields returns the stream fields (name, value, ...) of m's outbox entry — payload,
// key, sequence, type — in the order the ledger's commit script writes them. Partition,
// StreamID and ID are not stored: the stream holds the first two and ID follows from Key
// and Seq.
func EntryFields(m Message) []any {
	return []any{
		FieldPayload, string(m.Payload),
		FieldKey, m.Key,
		FieldSeq, strconv.FormatInt(m.Seq, 10),
		FieldType, m.Type,
	}
}

// DecodeEntry returns the Message of an outbox stream entry's values, with ID set and
// Partition and StreamID left for the caller. It returns an error wrapping
// ErrMalformedEntry when the payload is missing or not valid JSON, the key is missing or
// empty, or the sequence is not an integer ≥ 1. A missing type is the empty string.
func DecodeEntry(values map[string]any) (Message, error) {
	payload, ok := values[FieldPayload].(string)
	if !ok {
		return Message{}, fmt.Errorf("%w: no %q field", ErrMalformedEntry, FieldPayload)
	}
	if !json.Valid([]byte(payload)) {
		return Message{}, fmt.Errorf("%w: %q is not valid JSON", ErrMalformedEntry, FieldPayload)
	}
	key, _ := values[FieldKey].(string)
	if key == "" {
		return Message{}, fmt.Errorf("%w: no %q field", ErrMalformedEntry, FieldKey)
	}
	seqStr, _ := values[FieldSeq].(string)
	seq, err := strconv.ParseInt(seqStr, 10, 64)
	if err != nil || seq < 1 {
		return Message{}, fmt.Errorf("%w: %q field %q is not a sequence number ≥ 1", ErrMalformedEntry, FieldSeq, seqStr)
	}
	typ, _ := values[FieldType].(string)
	return Message{ID: MessageID(key, seq), Key: key, Seq: seq, Type: typ, Payload: json.RawMessage(payload)}, nil
}
