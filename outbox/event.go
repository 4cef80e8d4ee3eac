// Package outbox owns the transactional outbox: the entry format the ledger's commit script
// writes into one Redis stream per partition, the relay that delivers those entries to sinks,
// and the deduplication consumers use to apply each event exactly once.
package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Outbox stream entry field names. The ledger's commit script writes exactly these fields.
const (
	FieldEvent   = "event"   // the Event as JSON
	FieldAccount = "account" // Event.Account, for cheap filtering without decoding
	FieldVersion = "version" // Event.Version as a decimal string
	FieldType    = "type"    // Event.Type
)

// ErrMalformedEntry is returned by DecodeEntry for an outbox entry without a valid event.
var ErrMalformedEntry = errors.New("outbox: malformed entry")

// Event is one committed ledger event as it travels through the outbox to consumers.
// Its ID is globally unique and stable across redeliveries: "<account>:<version>".
type Event struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Account string          `json:"account"`
	Version int64           `json:"version"`
	Time    time.Time       `json:"time"`
	Data    json.RawMessage `json:"data"`
}

// EventID returns the ID of the event with the given version of an account.
func EventID(account string, version int64) string {
	return account + ":" + strconv.FormatInt(version, 10)
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

// EntryFields returns the stream fields (name, value, ...) for an event already encoded as
// JSON, in the order the commit script writes them.
func EntryFields(e Event, encoded []byte) []any {
	return []any{
		FieldEvent, string(encoded),
		FieldAccount, e.Account,
		FieldVersion, strconv.FormatInt(e.Version, 10),
		FieldType, e.Type,
	}
}

// DecodeEntry decodes the values of an outbox stream entry. It returns ErrMalformedEntry
// when the event field is missing or is not a valid Event.
func DecodeEntry(values map[string]any) (Event, error) {
	raw, ok := values[FieldEvent].(string)
	if !ok {
		return Event{}, fmt.Errorf("%w: no %q field", ErrMalformedEntry, FieldEvent)
	}
	var e Event
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformedEntry, err)
	}
	if e.ID == "" || e.Account == "" || e.Version < 1 {
		return Event{}, fmt.Errorf("%w: event without id, account or version", ErrMalformedEntry)
	}
	return e, nil
}
