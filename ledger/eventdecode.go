package ledger

import (
	"encoding/json"
	"math"
	"strings"
)

// Decoding events without reflection.
//
// Every event the relay delivers is decoded by each consumer (the projector and the transfer
// process manager decode the same message), and every event a request emits is decoded
// again by Account.apply. With encoding/json that was a sixth of serve's CPU under
// cross-partition transfers. The events this package writes have one canonical shape
// (Event.appendJSON: fixed field order, no whitespace, data written by json.Marshal), so
// the decoders below read that shape directly and hand anything else — escapes, other
// field orders, floats, whitespace, unknown fields — to encoding/json. The fast path
// accepts only input encoding/json accepts and gives the same result (FuzzDecodeEvent
// checks both).

// decodeEventJSON decodes an event's JSON as json.Unmarshal(b, &e) does into a zero Event.
func decodeEventJSON(b []byte) (Event, error) {
	if e, ok := fastEvent(b); ok {
		return e, nil
	}
	var e Event
	err := json.Unmarshal(b, &e)
	return e, err
}

// splitArray returns the elements of the JSON array b as slices of it, as json.Unmarshal(b,
// &[]json.RawMessage{}) does (an atomic batch's responses, joined by encodeBody): without
// decoding them when they are in the canonical subset, through encoding/json otherwise.
func splitArray(b []byte) ([]json.RawMessage, error) {
	c := scan{b: b}
	out := []json.RawMessage{}
	ok := c.lit("[")
	for first := true; ok && !c.lit("]"); first = false {
		if !first && !c.lit(",") {
			ok = false
			break
		}
		var v []byte
		if v, ok = c.value(0); ok {
			out = append(out, v[:len(v):len(v)])
		}
	}
	if ok && c.i == len(b) {
		return out, nil
	}
	out = nil
	err := json.Unmarshal(b, &out)
	return out, err
}

// decodeDataJSON decodes an event's data into v as json.Unmarshal(data, v) does.
func decodeDataJSON(data []byte, v any) error {
	if fastData(data, v) {
		return nil
	}
	return json.Unmarshal(data, v)
}

// fastData decodes the data types of the hot path (MoneyData, TransferData, and the
// projector's eventAmount) when data has the shape json.Marshal gives them, and reports
// whether it did; it leaves v alone when it did not.
func fastData(data []byte, v any) bool {
	switch d := v.(type) {
	case *MoneyData:
		return fastInto(data, d, func(x *MoneyData, k, s string, n int64, num bool) bool {
			switch {
			case k == "operation_id" && !num:
				x.OperationID = s
			case k == "currency" && !num:
				x.Currency = s
			case k == "amount" && num:
				x.Amount = n
			default:
				return false
			}
			return true
		})
	case *TransferData:
		return fastInto(data, d, func(x *TransferData, k, s string, n int64, num bool) bool {
			switch {
			case k == "transfer_id" && !num:
				x.TransferID = s
			case k == "from" && !num:
				x.From = s
			case k == "to" && !num:
				x.To = s
			case k == "currency" && !num:
				x.Currency = s
			case k == "amount" && num:
				x.Amount = n
			case k == "reason" && !num:
				x.Reason = s
			default:
				return false
			}
			return true
		})
	case *eventAmount:
		return fastInto(data, d, func(x *eventAmount, k, s string, n int64, num bool) bool {
			switch {
			case k == "currency" && !num:
				x.Currency = s
			case k == "amount" && num:
				x.Amount = n
			case k == "released" && num:
				x.Released = n
			default:
				// encoding/json ignores other members, but matches names without regard
				// to case: leave those to it.
				return !strings.EqualFold(k, "currency") && !strings.EqualFold(k, "amount") && !strings.EqualFold(k, "released")
			}
			return true
		})
	}
	return false
}

// fastInto reads data with fastFlat into a copy of *d, set storing each member, and keeps
// the copy only when every member was taken: on a fallback, encoding/json must start from
// what the caller gave.
func fastInto[T any](data []byte, d *T, set func(x *T, k, s string, n int64, num bool) bool) bool {
	x := *d
	if !fastFlat(data, func(k, s string, n int64, num bool) bool { return set(&x, k, s, n, num) }) {
		return false
	}
	*d = x
	return true
}

// scan reads the canonical JSON subset. Every method returns false (and the caller falls
// back to encoding/json) on anything outside it.
type scan struct {
	b []byte
	i int
}

// lit consumes s.
func (c *scan) lit(s string) bool {
	if len(c.b)-c.i < len(s) || string(c.b[c.i:c.i+len(s)]) != s {
		return false
	}
	c.i += len(s)
	return true
}

// str consumes a string of printable ASCII without escapes and returns its contents: the
// strings whose Go value is their bytes (no escape to undo, no invalid UTF-8 to replace).
func (c *scan) str() (string, bool) {
	b, ok := c.strBytes()
	return string(b), ok
}

// strBytes is str without the copy: the bytes between the quotes.
func (c *scan) strBytes() ([]byte, bool) {
	if c.i >= len(c.b) || c.b[c.i] != '"' {
		return nil, false
	}
	for j := c.i + 1; j < len(c.b); j++ {
		switch ch := c.b[j]; {
		case ch == '"':
			s := c.b[c.i+1 : j]
			c.i = j + 1
			return s, true
		case ch < 0x20 || ch > 0x7e || ch == '\\':
			return nil, false
		}
	}
	return nil, false
}

// int consumes an integer as JSON writes one (-?(0|[1-9][0-9]*)) that fits an int64.
func (c *scan) int() (int64, bool) {
	j := c.i
	neg := j < len(c.b) && c.b[j] == '-'
	if neg {
		j++
	}
	start := j
	var n uint64
	for ; j < len(c.b) && c.b[j] >= '0' && c.b[j] <= '9'; j++ {
		if j-start >= 19 {
			return 0, false // 19 digits always fit; longer ones go to encoding/json
		}
		n = n*10 + uint64(c.b[j]-'0')
	}
	if j == start || (c.b[start] == '0' && j-start > 1) {
		return 0, false
	}
	if j < len(c.b) && (c.b[j] == '.' || c.b[j] == 'e' || c.b[j] == 'E') {
		return 0, false // a float: encoding/json decides what it means for an int64
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	c.i = j
	if neg {
		return -int64(n), true
	}
	return int64(n), true
}

// maxDepth bounds the nesting the fast path skips over (deeper data falls back).
const maxDepth = 16

// value consumes one JSON value of the subset (objects, arrays, plain strings, integers,
// true, false, null) and returns its bytes.
func (c *scan) value(depth int) ([]byte, bool) {
	if depth > maxDepth || c.i >= len(c.b) {
		return nil, false
	}
	start := c.i
	ok := false
	switch ch := c.b[c.i]; {
	case ch == '"':
		_, ok = c.str()
	case ch == '-' || (ch >= '0' && ch <= '9'):
		_, ok = c.int()
	case ch == 't':
		ok = c.lit("true")
	case ch == 'f':
		ok = c.lit("false")
	case ch == 'n':
		ok = c.lit("null")
	case ch == '{':
		c.i++
		ok = c.lit("}")
		for first := true; !ok; first = false {
			if !first && !c.lit(",") {
				return nil, false
			}
			if _, ok := c.str(); !ok || !c.lit(":") {
				return nil, false
			}
			if _, ok := c.value(depth + 1); !ok {
				return nil, false
			}
			ok = c.lit("}")
		}
	case ch == '[':
		c.i++
		ok = c.lit("]")
		for first := true; !ok; first = false {
			if !first && !c.lit(",") {
				return nil, false
			}
			if _, ok := c.value(depth + 1); !ok {
				return nil, false
			}
			ok = c.lit("]")
		}
	}
	if !ok {
		return nil, false
	}
	return c.b[start:c.i], true
}

// fastEvent decodes the shape Event.appendJSON writes.
func fastEvent(b []byte) (Event, bool) {
	var e Event
	c := scan{b: b}
	var ok bool
	if !c.lit(`{"id":`) {
		return e, false
	}
	if e.ID, ok = c.str(); !ok || !c.lit(`,"type":`) {
		return e, false
	}
	typ, ok := c.strBytes()
	if !ok || !c.lit(`,"account":`) {
		return e, false
	}
	e.Type = eventType(typ)
	if e.Account, ok = c.str(); !ok || !c.lit(`,"version":`) {
		return e, false
	}
	if e.Version, ok = c.int(); !ok || !c.lit(`,"time":`) {
		return e, false
	}
	t, ok := c.strBytes()
	if !ok || e.Time.UnmarshalText(t) != nil || !c.lit(`,"data":`) {
		return e, false // UnmarshalText parses as Time.UnmarshalJSON does
	}
	data, ok := c.value(0)
	if !ok {
		return e, false
	}
	e.Data = append(json.RawMessage(nil), data...)
	if c.lit(`,"balances":{`) {
		e.Balances = map[string]Balance{}
		for first := true; !c.lit("}"); first = false {
			if !first && !c.lit(",") {
				return e, false
			}
			var cur string
			var bal Balance
			if cur, ok = c.str(); !ok || !c.lit(`:{"posted":`) {
				return e, false
			}
			if bal.Posted, ok = c.int(); !ok || !c.lit(`,"held":`) {
				return e, false
			}
			if bal.Held, ok = c.int(); !ok || !c.lit(`,"available":`) {
				return e, false
			}
			if bal.Available, ok = c.int(); !ok || !c.lit("}") {
				return e, false
			}
			e.Balances[cur] = bal
		}
	}
	if !c.lit("}") || c.i != len(b) {
		return e, false
	}
	return e, true
}

// knownTypes are the strings eventType returns without a copy.
var knownTypes = EventTypes()

// eventType returns typ as a string, without a copy for the types this package knows.
func eventType(typ []byte) string {
	for _, t := range knownTypes {
		if string(typ) == t {
			return t
		}
	}
	return string(typ)
}

// fastFlat reads a flat object of plain strings and integers, calling set for each member
// in order (duplicates included: the last one wins, as in encoding/json); set returns false
// for a member it does not take.
func fastFlat(b []byte, set func(k, s string, n int64, num bool) bool) bool {
	c := scan{b: b}
	if !c.lit("{") {
		return false
	}
	for first := true; !c.lit("}"); first = false {
		if !first && !c.lit(",") {
			return false
		}
		k, ok := c.str()
		if !ok || !c.lit(":") {
			return false
		}
		if c.i < len(b) && b[c.i] == '"' {
			s, ok := c.str()
			if !ok || !set(k, s, 0, false) {
				return false
			}
		} else {
			n, ok := c.int()
			if !ok || !set(k, "", n, true) {
				return false
			}
		}
	}
	return c.i == len(b)
}
