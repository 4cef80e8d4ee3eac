package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/tally-ledger/tally/outbox"
)

// Event types of an account's stream (DESIGN §8).
const (
	EventAccountOpened    = "AccountOpened"
	EventDeposited        = "Deposited"
	EventWithdrawn        = "Withdrawn"
	EventTransferDebited  = "TransferDebited"
	EventTransferCredited = "TransferCredited"
	EventTransferRefunded = "TransferRefunded"
	EventHoldPlaced       = "HoldPlaced"
	EventHoldCaptured     = "HoldCaptured"
	EventHoldVoided       = "HoldVoided"
	EventHoldExpired      = "HoldExpired"
	EventAccountClosed    = "AccountClosed"

	// Overdraft limits and threshold alerts (docs/limits-and-alerts.md).
	EventOverdraftLimitSet = "OverdraftLimitSet"
	EventAlertCreated      = "AlertCreated"
	EventAlertDeleted      = "AlertDeleted"
	EventBalanceAlert      = "BalanceAlert"
)

// Event is one entry of an account's event stream. The commit script appends its JSON to
// the account's stream and, in the same step, to the partition outbox as the payload of an
// entry whose key is Account, sequence Version and type Type; the outbox delivers that JSON
// unchanged (DecodeEvent turns an outbox.Message back into the Event). The JSON is also
// the public shape of GET /v1/accounts/{id}/events and of webhook bodies.
type Event struct {
	// ID is EventID(Account, Version): globally unique, the same on every redelivery, and
	// equal to the ID of the outbox message that carries the event.
	ID      string          `json:"id"`
	Type    string          `json:"type"` // one of the Event* constants
	Account string          `json:"account"`
	Version int64           `json:"version"` // from 1, without gaps per account
	Time    time.Time       `json:"time"`    // when the event was decided (the ledger's clock)
	Data    json.RawMessage `json:"data"`    // the type's data: OpenedData, MoneyData, ...
	// Balances are the account's balances right after the event, settled at Time (Held
	// counts the holds still pending and unexpired then): what GET .../balances answers
	// for this version. Every event has them ({} before any currency) but those written
	// before Tally recorded them (nil: history then replays the stream).
	Balances map[string]Balance `json:"balances,omitzero"`
}

// EventID returns the ID of the event with the given version of an account:
// "<account>:<version>", the outbox message ID (outbox.MessageID) of its entry.
func EventID(account string, version int64) string {
	return outbox.MessageID(account, version)
}

// ErrMalformedEvent is wrapped by DecodeEvent's errors: an outbox message that does not carry
// a ledger event. Consumers treat it as permanent (retrying cannot help).
var ErrMalformedEvent = errors.New("malformed event")

// DecodeEvent returns the event an outbox message carries: its payload, checked against the
// message. It returns an error wrapping ErrMalformedEvent when the payload is not an event
// JSON object, or when the event's ID, account, version or type disagree with the message's
// ID, Key, Seq or Type.
func DecodeEvent(m outbox.Message) (Event, error) {
	e, err := decodeEventJSON(m.Payload)
	if err != nil {
		return Event{}, fmt.Errorf("ledger: message %s: %w: %v", m.ID, ErrMalformedEvent, err)
	}
	if e.ID != m.ID || e.Account != m.Key || e.Version != m.Seq || e.Type != m.Type {
		return Event{}, fmt.Errorf("ledger: message %s: %w: payload is event %q of %q version %d type %q, entry says %q version %d type %q",
			m.ID, ErrMalformedEvent, e.ID, e.Account, e.Version, e.Type, m.Key, m.Seq, m.Type)
	}
	return e, nil
}

// streamFieldEvent is the field of an account event stream entry that holds the event JSON
// (the commit script writes "type" and "event").
const streamFieldEvent = "event"

// decodeStreamEntry returns the event of an account event stream entry's values. It
// returns an error wrapping ErrMalformedEvent when the event field is missing or is not an
// event with an ID, account and version.
func decodeStreamEntry(values map[string]any) (Event, error) {
	raw, ok := values[streamFieldEvent].(string)
	if !ok {
		return Event{}, fmt.Errorf("%w: no %q field", ErrMalformedEvent, streamFieldEvent)
	}
	e, err := decodeEventJSON([]byte(raw))
	if err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformedEvent, err)
	}
	if e.ID == "" || e.Account == "" || e.Version < 1 {
		return Event{}, fmt.Errorf("%w: event without id, account or version", ErrMalformedEvent)
	}
	return e, nil
}

// OpenedData is the data of an AccountOpened event.
type OpenedData struct {
	AllowNegative  bool              `json:"allow_negative"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	OverdraftLimit map[string]int64  `json:"overdraft_limit,omitempty"` // per currency, each > 0
}

// OverdraftLimitData is the data of an OverdraftLimitSet event: the limits it sets, by
// currency; 0 removes a currency's limit. Currencies it does not name keep theirs.
type OverdraftLimitData struct {
	OverdraftLimit map[string]int64 `json:"overdraft_limit"`
}

// AlertDeletedData is the data of an AlertDeleted event. (AlertCreated carries an Alert.)
type AlertDeletedData struct {
	AlertID string `json:"alert_id"`
}

// BalanceAlertData is the data of a BalanceAlert event: the commit whose events end with
// the event EventID (version Version) took the available balance of Currency across the
// alert's Threshold in Direction, from AvailableBefore to AvailableAfter.
type BalanceAlertData struct {
	AlertID         string `json:"alert_id"`
	Currency        string `json:"currency"`
	Direction       string `json:"direction"` // AlertBelow or AlertAbove
	Threshold       int64  `json:"threshold"`
	AvailableBefore int64  `json:"available_before"`
	AvailableAfter  int64  `json:"available_after"`
	EventID         string `json:"event_id"`
	Version         int64  `json:"version"`
}

// MoneyData is the data of Deposited and Withdrawn events.
type MoneyData struct {
	OperationID string `json:"operation_id"`
	Currency    string `json:"currency"`
	Amount      int64  `json:"amount"`
}

// TransferData is the data of TransferDebited (on the source), TransferCredited (on the
// destination) and TransferRefunded (on the source) events.
type TransferData struct {
	TransferID string `json:"transfer_id"`
	From       string `json:"from"`
	To         string `json:"to"`
	Currency   string `json:"currency"`
	Amount     int64  `json:"amount"`
	Reason     string `json:"reason,omitempty"` // TransferRefunded: why the credit was refused
}

// HoldData is the data of HoldPlaced, HoldCaptured, HoldVoided and HoldExpired events.
// Amount is the held amount; Captured what a capture took (the rest was released); To and
// TransferID are set when the capture moved the money to another account.
type HoldData struct {
	HoldID     string    `json:"hold_id"`
	Currency   string    `json:"currency"`
	Amount     int64     `json:"amount"`
	ExpiresAt  time.Time `json:"expires_at"`
	Captured   int64     `json:"captured,omitempty"`
	To         string    `json:"to,omitempty"`
	TransferID string    `json:"transfer_id,omitempty"`
}

// decodeData decodes the data of e into v.
func decodeData(e Event, v any) error {
	if err := decodeDataJSON(e.Data, v); err != nil {
		return fmt.Errorf("ledger: decode %s: %w", e.ID, err)
	}
	return nil
}

// appendJSON appends e's JSON to b: the bytes json.Marshal(e) gives, without its
// reflection, its map sorting through reflect and its re-validation of Data, which made
// encoding the events of a commit a twentieth of the write path's CPU. Data must be compact
// JSON, as emit produces it. The only error is Time's (a year outside 0..9999).
func (e Event) appendJSON(b []byte) ([]byte, error) {
	b = appendJSONString(append(b, `{"id":`...), e.ID)
	b = appendJSONString(append(b, `,"type":`...), e.Type)
	b = appendJSONString(append(b, `,"account":`...), e.Account)
	b = strconv.AppendInt(append(b, `,"version":`...), e.Version, 10)
	b, err := e.Time.AppendText(append(b, `,"time":"`...)) // what MarshalJSON quotes
	if err != nil {
		return nil, err
	}
	b = append(b, '"')
	b = append(b, `,"data":`...)
	if len(e.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, e.Data...)
	}
	if e.Balances != nil {
		b = appendBalances(append(b, `,"balances":`...), e.Balances)
	}
	return append(b, '}'), nil
}

// dataAs returns data when it is a T (what emit has in hand), else e's data decoded as a T.
func dataAs[T any](e Event, data any) (T, error) {
	if d, ok := data.(T); ok {
		return d, nil
	}
	var d T
	err := decodeData(e, &d)
	return d, err
}

// encodeData returns an event's data as json.Marshal(data) writes it, without reflection
// for the types of the hot path (MoneyData and TransferData).
func encodeData(data any) ([]byte, error) {
	switch d := data.(type) {
	case MoneyData:
		b := appendJSONString(append(make([]byte, 0, 96), `{"operation_id":`...), d.OperationID)
		b = appendJSONString(append(b, `,"currency":`...), d.Currency)
		b = strconv.AppendInt(append(b, `,"amount":`...), d.Amount, 10)
		return append(b, '}'), nil
	case TransferData:
		b := appendJSONString(append(make([]byte, 0, 128), `{"transfer_id":`...), d.TransferID)
		b = appendJSONString(append(b, `,"from":`...), d.From)
		b = appendJSONString(append(b, `,"to":`...), d.To)
		b = appendJSONString(append(b, `,"currency":`...), d.Currency)
		b = strconv.AppendInt(append(b, `,"amount":`...), d.Amount, 10)
		if d.Reason != "" {
			b = appendJSONString(append(b, `,"reason":`...), d.Reason)
		}
		return append(b, '}'), nil
	}
	return json.Marshal(data)
}

// appendMap appends m as json.Marshal writes a map with string keys: keys sorted, null for
// nil, each value written by value.
func appendMap[V any](b []byte, m map[string]V, value func([]byte, V) []byte) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	keys := make([]string, 0, len(m)) // not slices.Sorted(maps.Keys(m)): 5 allocations more
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = value(append(appendJSONString(b, k), ':'), m[k])
	}
	return append(b, '}')
}

// appendBalances appends balances as json.Marshal writes the map.
func appendBalances(b []byte, balances map[string]Balance) []byte {
	return appendMap(b, balances, func(b []byte, bal Balance) []byte {
		b = strconv.AppendInt(append(b, `{"posted":`...), bal.Posted, 10)
		b = strconv.AppendInt(append(b, `,"held":`...), bal.Held, 10)
		b = strconv.AppendInt(append(b, `,"available":`...), bal.Available, 10)
		return append(b, '}')
	})
}

// appendJSON appends a's JSON to b: the bytes json.Marshal(a) gives (see Event.appendJSON).
func (a *Account) appendJSON(b []byte) []byte {
	if a == nil {
		return append(b, "null"...)
	}
	b = appendJSONString(append(b, `{"id":`...), a.ID)
	b = strconv.AppendInt(append(b, `,"version":`...), a.Version, 10)
	b = appendJSONString(append(b, `,"status":`...), a.Status)
	b = strconv.AppendBool(append(b, `,"allow_negative":`...), a.AllowNegative)
	if len(a.Metadata) > 0 {
		b = appendMap(append(b, `,"metadata":`...), a.Metadata, appendJSONString)
	}
	b = appendBalances(append(b, `,"balances":`...), a.Balances)
	if len(a.OverdraftLimit) > 0 {
		b = appendMap(append(b, `,"overdraft_limit":`...), a.OverdraftLimit, func(b []byte, n int64) []byte {
			return strconv.AppendInt(b, n, 10)
		})
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string: as is between quotes when it holds only
// printable ASCII that needs no escaping (and none that encoding/json escapes for HTML),
// else as json.Marshal writes it (which cannot fail for a string: invalid UTF-8 becomes
// U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
