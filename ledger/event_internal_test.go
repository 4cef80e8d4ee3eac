package ledger

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestEventAppendJSONIsMarshal: the commit path's event encoder writes exactly the bytes
// json.Marshal writes, for the events the ledger makes and for strings it never makes.
func TestEventAppendJSONIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	str := func() string {
		pool := []string{"alice", "shop1..bob", "a:b", "", "é", "<&>", "q\"uote", "back\\slash", "tab\t", "\x00", "\u2028", "\xff"}
		return pool[r.IntN(len(pool))] + fmt.Sprint(r.IntN(100))
	}
	datas := []json.RawMessage{nil, json.RawMessage(`{}`), json.RawMessage(`{"operation_id":"a:2","currency":"USD","amount":5}`)}
	for i := range 2000 {
		e := Event{ID: str(), Type: str(), Account: str(), Version: r.Int64() - r.Int64(),
			Time: time.Unix(r.Int64N(1<<34), r.Int64N(1e9)).UTC(), Data: datas[r.IntN(len(datas))]}
		if i%7 == 0 {
			e.Time = time.Time{}
		}
		if i%5 == 0 {
			e.Time = e.Time.In(time.FixedZone("X", 3600))
		}
		if r.IntN(4) > 0 {
			e.Balances = map[string]Balance{}
			for range r.IntN(4) {
				e.Balances[str()] = Balance{Posted: r.Int64() - r.Int64(), Held: r.Int64N(1000), Available: -r.Int64()}
			}
		}
		want, err := json.Marshal(e)
		require.NoError(t, err)
		got, err := e.appendJSON(nil)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	}
}

// TestOperationResultAppendJSONIsMarshal: the same for the body of a deposit or withdrawal,
// with every field of an account set or not.
func TestOperationResultAppendJSONIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	str := func() string {
		pool := []string{"alice", "USD", "", "é", "<&>", "q\"uote", "\x00", "\u2028", "\xff"}
		return pool[r.IntN(len(pool))] + fmt.Sprint(r.IntN(100))
	}
	for i := range 2000 {
		var acc *Account
		if i%10 != 0 {
			acc = &Account{ID: str(), Version: r.Int64() - r.Int64(), Status: str(), AllowNegative: r.IntN(2) == 0}
			if r.IntN(3) == 0 {
				acc.Metadata = map[string]string{}
				for range r.IntN(3) {
					acc.Metadata[str()] = str()
				}
			}
			if r.IntN(5) > 0 {
				acc.Balances = map[string]Balance{}
				for range r.IntN(3) {
					acc.Balances[str()] = Balance{Posted: r.Int64() - r.Int64(), Held: r.Int64N(9), Available: -r.Int64()}
				}
			}
			if r.IntN(3) == 0 {
				acc.OverdraftLimit = map[string]int64{}
				for range r.IntN(3) {
					acc.OverdraftLimit[str()] = r.Int64()
				}
			}
		}
		body := OperationResult{OperationID: str(), Account: acc}
		want, err := json.Marshal(body)
		require.NoError(t, err)
		got, err := encodeBody(body)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	}
}

// BenchmarkEventEncode compares the two encoders on a deposit's event.
func BenchmarkEventEncode(b *testing.B) {
	e := Event{ID: "acct42:17", Type: EventDeposited, Account: "acct42", Version: 17, Time: time.Now().UTC(),
		Data:     json.RawMessage(`{"operation_id":"acct42:17","currency":"USD","amount":100}`),
		Balances: map[string]Balance{"USD": {Posted: 1700, Available: 1700}}}
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(e)
		}
	})
	b.Run("appendJSON", func(b *testing.B) {
		for b.Loop() {
			_, _ = e.appendJSON(make([]byte, 0, 256))
		}
	})
}

// The relay's consumers decode every event (docs/benchmarks.md): encoding/json against the
// canonical fast path of decodeEventJSON.
func BenchmarkEventDecode(b *testing.B) {
	e := Event{ID: "acct42:17", Type: EventDeposited, Account: "acct42", Version: 17, Time: time.Now().UTC(),
		Data:     json.RawMessage(`{"operation_id":"acct42:17","currency":"USD","amount":100}`),
		Balances: map[string]Balance{"USD": {Posted: 1700, Available: 1700}}}
	raw, err := e.appendJSON(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("json.Unmarshal", func(b *testing.B) {
		for b.Loop() {
			var e Event
			_ = json.Unmarshal(raw, &e)
		}
	})
	b.Run("decodeEventJSON", func(b *testing.B) {
		for b.Loop() {
			_, _ = decodeEventJSON(raw)
		}
	})
}

// fillAll sets every exported field of the value v points to, recursively, with random
// values (strings from str), and fails on a field kind it does not know. The hand-written
// encoders are compared with json.Marshal on values it filled, so a field added to one of
// their types and forgotten by its encoder fails the comparison instead of being dropped
// from what the ledger writes.
func fillAll(t *testing.T, r *rand.Rand, v reflect.Value, str func() string) {
	t.Helper()
	switch {
	case v.Type() == reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(time.Unix(r.Int64N(1<<34), r.Int64N(1e9)).UTC()))
		return
	case v.Type() == reflect.TypeFor[json.RawMessage]():
		v.Set(reflect.ValueOf(json.RawMessage(`{"k":[1,"v"]}`)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(str())
	case reflect.Int64:
		v.SetInt(r.Int64() - r.Int64())
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fillAll(t, r, v.Elem(), str)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fillAll(t, r, v.Field(i), str)
			}
		}
	case reflect.Map:
		if v.Type().Key().Kind() != reflect.String {
			t.Fatalf("fillAll: map key %s", v.Type().Key())
		}
		v.Set(reflect.MakeMap(v.Type()))
		for range 1 + r.IntN(3) {
			e := reflect.New(v.Type().Elem()).Elem()
			fillAll(t, r, e, str)
			v.SetMapIndex(reflect.ValueOf(str()), e)
		}
	default:
		t.Fatalf("fillAll: a field of kind %s: teach fillAll and the hand-written encoder of its type", v.Kind())
	}
}

// Every field of the hand-encoded types set at once: the encoders write each of them as
// json.Marshal does (the tests above set the fields the ledger uses one way or another).
func TestHandEncodersWriteEveryField(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	str := func() string {
		pool := []string{"alice", "USD", "é", "<&>", "q\"uote", "\xff"}
		return pool[r.IntN(len(pool))] + fmt.Sprint(r.IntN(100))
	}
	for range 200 {
		var e Event
		fillAll(t, r, reflect.ValueOf(&e).Elem(), str)
		want, err := json.Marshal(e)
		require.NoError(t, err)
		got, err := e.appendJSON(nil)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))

		var body OperationResult
		fillAll(t, r, reflect.ValueOf(&body).Elem(), str)
		want, err = json.Marshal(body)
		require.NoError(t, err)
		got, err = encodeBody(body)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))

		for _, data := range []any{&MoneyData{}, &TransferData{}} {
			fillAll(t, r, reflect.ValueOf(data).Elem(), str)
			v := reflect.ValueOf(data).Elem().Interface() // encodeData takes values, as emit passes them
			want, err := json.Marshal(v)
			require.NoError(t, err)
			got, err := encodeData(v)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got))
		}
	}
}
