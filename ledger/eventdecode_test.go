package ledger

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sameAsJSON fails unless decoding b with the fast decoders gives exactly what
// encoding/json gives: the event, and the data types with a fast path (from a zero value
// and from a filled one, as json.Unmarshal merges into what is there).
func sameAsJSON(t *testing.T, b []byte) {
	t.Helper()
	got, gotErr := decodeEventJSON(b)
	var want Event
	wantErr := json.Unmarshal(b, &want)
	require.Equal(t, wantErr == nil, gotErr == nil, "event %q: errors differ: fast %v, json %v", b, gotErr, wantErr)
	if wantErr == nil {
		require.True(t, got.Time.Equal(want.Time) && got.Time.Location().String() == want.Time.Location().String(),
			"event %q: time %v, json %v", b, got.Time, want.Time)
		got.Time, want.Time = time.Time{}, time.Time{}
		require.True(t, reflect.DeepEqual(got, want), "event %q:\nfast %#v\njson %#v", b, got, want)
	}
	for _, zero := range []func() any{
		func() any { return &MoneyData{} },
		func() any { return &MoneyData{OperationID: "o", Currency: "C", Amount: 7} },
		func() any { return &TransferData{} },
		func() any {
			return &TransferData{TransferID: "t", From: "a", To: "b", Currency: "C", Amount: 7, Reason: "r"}
		},
		func() any { return &eventAmount{} },
		func() any { return &eventAmount{Currency: "C", Amount: 7, Released: 9} },
	} {
		got, want := zero(), zero()
		gotErr, wantErr := decodeDataJSON(b, got), json.Unmarshal(b, want)
		require.Equal(t, wantErr == nil, gotErr == nil, "data %q into %T: errors differ: fast %v, json %v", b, got, gotErr, wantErr)
		require.Equal(t, want, got, "data %q into %T", b, got)
	}
}

// randomEvent is an event as emit makes them, with the data of one of the hot types or of
// others (metadata maps, times, nested objects), balances or none, and IDs that need
// escaping now and then.
func randomEvent(r *rand.Rand) Event {
	name := func() string {
		switch r.IntN(8) {
		case 0:
			return "acct-" + strconv.Itoa(r.IntN(100)) + "\u00e9" // not ASCII: json's path
		case 1:
			return `quo"te`
		}
		return "acct-" + strconv.Itoa(r.IntN(100))
	}
	amount := r.Int64N(1 << 40)
	var data any
	typ := EventDeposited
	switch r.IntN(5) {
	case 0:
		data = MoneyData{OperationID: name() + ":1", Currency: "USD", Amount: amount}
	case 1:
		typ = EventTransferDebited
		data = TransferData{TransferID: name(), From: name(), To: name(), Currency: "EUR", Amount: amount}
	case 2:
		typ = EventTransferRefunded
		data = TransferData{TransferID: name(), From: name(), To: name(), Currency: "EUR", Amount: amount, Reason: "account_closed"}
	case 3:
		typ = EventAccountOpened
		data = OpenedData{AllowNegative: r.IntN(2) == 0, Metadata: map[string]string{"k": name(), "n": "x\ty"},
			OverdraftLimit: map[string]int64{"USD": amount + 1}}
	default:
		typ = EventHoldPlaced
		data = HoldData{HoldID: name(), Currency: "USD", Amount: amount, ExpiresAt: time.Unix(r.Int64N(1<<31), r.Int64N(1e9)).UTC()}
	}
	raw, err := json.Marshal(data)
	if err != nil {
		panic(err)
	}
	a, v := name(), 1+r.Int64N(1000)
	e := Event{ID: EventID(a, v), Type: typ, Account: a, Version: v, Time: time.Unix(r.Int64N(1<<33), r.Int64N(1e9)).UTC(), Data: raw}
	if r.IntN(4) > 0 {
		e.Balances = map[string]Balance{}
		for range r.IntN(3) {
			e.Balances[[]string{"USD", "EUR", "JPY"}[r.IntN(3)]] = Balance{Posted: r.Int64N(1e12) - 5e11, Held: r.Int64N(1e9), Available: -r.Int64N(1e12)}
		}
	}
	return e
}

// Events as the ledger writes them decode to what encoding/json gives, and those with
// plain IDs and hot data take the fast paths (or the speed-up silently disappears).
func TestDecodeEventFastPath(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	fast := 0
	for range 3000 {
		e := randomEvent(r)
		b, err := e.appendJSON(nil)
		require.NoError(t, err)
		sameAsJSON(t, b)
		sameAsJSON(t, e.Data)

		_, ok := fastEvent(b)
		switch e.Type {
		case EventDeposited, EventTransferDebited, EventTransferRefunded:
			var d eventAmount
			require.Equal(t, plainJSON(e.Data), fastData(e.Data, &d), "projector data %s", e.Data)
		}
		if e.Type == EventDeposited {
			var d MoneyData
			require.Equal(t, plainJSON(e.Data), fastData(e.Data, &d), "money data %s", e.Data)
		}
		require.Equal(t, plainJSON(b), ok, "event %s: fast path taken %v", b, ok)
		if ok {
			fast++
		}
	}
	require.Greater(t, fast, 1000)
}

// plainJSON reports whether b's strings are all printable ASCII without escapes.
func plainJSON(b []byte) bool {
	in := false
	for _, c := range b {
		switch {
		case c == '"':
			in = !in
		case in && (c < 0x20 || c > 0x7e || c == '\\'):
			return false
		}
	}
	return true
}

// FuzzDecodeEvent: for any input, the fast decoders agree with encoding/json. The seeds
// are canonical events and near misses (other orders, case, whitespace, floats, escapes).
func FuzzDecodeEvent(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		b, err := randomEvent(r).appendJSON(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05.123Z","data":{"operation_id":"x","currency":"USD","amount":5},"balances":{"USD":{"posted":5,"held":0,"available":5}}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05+02:00","data":null}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":01,"time":"2026-01-02T03:04:05Z","data":{}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1.0,"time":"2026-01-02T03:04:05Z","data":{}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":9223372036854775808,"time":"2026-01-02T03:04:05Z","data":{}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02 03:04:05Z","data":{}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05Z","data":{"a":[1,{"b":[]}],"c":true,"d":false,"e":null,"f":-0}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05Z","data":{},"balances":{"USD":{"posted":1,"held":2,"available":3},"USD":{"posted":4,"held":5,"available":6}}}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05Z","data":{},"balances":null}`,
		`{"id":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05Z","data":{},"balances":{}} `,
		`{"ID":"a:1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05Z","data":{}}`,
		`{"id":"a\u003a1","type":"Deposited","account":"a","version":1,"time":"2026-01-02T03:04:05Z","data":{}}`,
		`{"operation_id":"x","currency":"USD","amount":5,"amount":6}`,
		`{"operation_id":"x","Currency":"USD","amount":5}`,
		`{"transfer_id":"t","from":"a","to":"b","currency":"USD","amount":5,"reason":"account_closed"}`,
		`{"hold_id":"h","currency":"USD","amount":5,"released":2,"Released":3}`,
		`{"currency":"USD","amount":1e3}`,
		`{"currency":"USD","amount":"5"}`,
		`{"currency":7,"amount":5}`,
		`{"currency":"USD","amount":-9223372036854775808}`,
		`{"currency":"USD","amount":5,}`,
		`{"currency":"USD" ,"amount":5}`,
		`{}`, `null`, `[]`, `"x"`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsJSON(t, b)
	})
}

// encodeData writes the hot data types byte for byte as json.Marshal does, whatever their
// strings hold (quotes, HTML characters, control characters, invalid UTF-8).
func TestEncodeDataMatchesJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	chars := []byte("ab<>&\"\\\x01\x7f\xc3\xa9\xff")
	str := func() string {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = chars[r.IntN(len(chars))]
		}
		return string(b)
	}
	for range 2000 {
		for _, data := range []any{
			MoneyData{OperationID: str(), Currency: str(), Amount: r.Int64() - r.Int64()},
			TransferData{TransferID: str(), From: str(), To: str(), Currency: str(), Amount: r.Int64(), Reason: []string{"", str()}[r.IntN(2)]},
			HoldData{HoldID: str(), Currency: "USD", Amount: 5}, // through json.Marshal
		} {
			want, err := json.Marshal(data)
			require.NoError(t, err)
			got, err := encodeData(data)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got), "%#v", data)
		}
	}
}

// A decision applies the data it has in hand (applyData); replay decodes the event's JSON
// (apply). Both must leave the account in the same state.
func TestApplyDataIsApply(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for range 2000 {
		var data any
		typ := []string{EventDeposited, EventWithdrawn, EventTransferDebited, EventTransferCredited, EventTransferRefunded}[r.IntN(5)]
		cur := []string{"USD", "EUR"}[r.IntN(2)]
		if typ == EventDeposited || typ == EventWithdrawn {
			data = MoneyData{OperationID: "a:2", Currency: cur, Amount: r.Int64N(1e9)}
		} else {
			data = TransferData{TransferID: "t", From: "a", To: "b", Currency: cur, Amount: r.Int64N(1e9)}
		}
		raw, err := encodeData(data)
		require.NoError(t, err)
		e := Event{ID: EventID("a", 2), Type: typ, Account: "a", Version: 2, Time: time.Unix(1, 0).UTC(), Data: raw}
		start := Account{ID: "a", Version: 1, Status: StatusOpen, Balances: map[string]Balance{"USD": {Posted: r.Int64N(1e9)}}}
		byData, byJSON := start.clone(), start.clone()
		require.NoError(t, byData.applyData(e, data))
		require.NoError(t, byJSON.apply(e))
		require.Equal(t, byJSON, byData, "%s %+v", typ, data)
	}
}
