package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
)

// Amount is a money amount in minor units as it appears in a request body: a JSON integer
// literal only. Floats (1.0), exponents (1e3), strings ("100") and values outside int64
// are rejected; money is never parsed through a float.
type Amount struct {
	Value int64
	Set   bool
}

// UnmarshalJSON accepts a bare JSON integer that fits int64. Its errors are written for the
// API's clients (see invalidInput).
func (a *Amount) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return invalidInput(`field "amount" must be an integer, not null`)
	}
	for i, ch := range b {
		if (ch < '0' || ch > '9') && !(i == 0 && ch == '-') {
			return invalidInput(`field "amount" must be an integer in minor units (no quotes, decimals or exponents)`)
		}
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return invalidInput(fmt.Sprintf(`field "amount" is out of range (at most %d minor units)`, int64(math.MaxInt64)))
	}
	a.Value, a.Set = v, true
	return nil
}

// invalidInput is a decoding error whose message is written for the API's clients: decode
// shows it as the problem detail as it is. Every other decoding error is translated.
type invalidInput string

func (e invalidInput) Error() string { return string(e) }

// decode reads exactly one JSON object into v, rejecting unknown fields, trailing data and
// oversized bodies. On failure it writes the problem and returns false. Problem details
// speak JSON (string, integer, boolean, object, array), never Go: encoding/json's messages
// are not passed through.
func (s *server) decode(c *gin.Context, v any) bool {
	dec := json.NewDecoder(c.Request.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = invalidInput("unexpected data after the JSON object")
	}
	if err == nil {
		if _, rerr := dec.Token(); rerr != io.EOF {
			err = invalidInput("unexpected data after the JSON object")
		}
	}
	if err == nil {
		return true
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeProblem(c, specTooLarge, fmt.Sprintf("request bodies are limited to %d bytes", tooLarge.Limit))
		return false
	}
	writeProblem(c, specInvalid, decodeDetail(err, reflect.TypeOf(v)))
	return false
}

// decodeDetail returns the problem detail for err, an error of decoding a body into a value
// of type target.
func decodeDetail(err error, target reflect.Type) string {
	var (
		input  invalidInput
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &input):
		return string(input)
	case errors.Is(err, io.EOF):
		return "request body must be a JSON object"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of input"
	case errors.As(err, &syntax):
		return fmt.Sprintf("malformed JSON at byte %d", syntax.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		return "request body must be a JSON object"
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be %s", typ.Field, describe(fieldType(target, typ.Field, typ.Type)))
	}
	if name, ok := unknownField(err); ok {
		return fmt.Sprintf("unknown field %q", name)
	}
	return "request body could not be read as a JSON object"
}

// unknownField returns the name in encoding/json's error for a field that
// DisallowUnknownFields rejects. encoding/json has no error type for it, so this is the one
// place that reads its message; another message yields ok false.
func unknownField(err error) (name string, ok bool) {
	quoted, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return "", false
	}
	name, uerr := strconv.Unquote(quoted)
	return name, uerr == nil
}

// fieldType returns the declared type of the field at the dotted JSON path within target
// (as encoding/json reports it: object keys, array elements skipped, map keys left out), or
// fallback when the path does not resolve. For a value inside a map it returns the map's
// type, so that {"metadata":{"a":1}} reads "metadata must be an object of strings".
func fieldType(target reflect.Type, path string, fallback reflect.Type) reflect.Type {
	t := target
	for _, name := range strings.Split(path, ".") {
		t = elem(t)
		if t.Kind() != reflect.Struct {
			return fallback
		}
		f, ok := jsonField(t, name)
		if !ok {
			return fallback
		}
		t = f
		if elem(t).Kind() == reflect.Map {
			return t
		}
	}
	return t
}

// elem strips pointers, slices and arrays: encoding/json paths name neither.
func elem(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
		t = t.Elem()
	}
	return t
}

// jsonField returns the type of struct t's field whose JSON name is name.
func jsonField(t reflect.Type, name string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "" {
			tag = f.Name
		}
		if f.IsExported() && tag == name {
			return f.Type, true
		}
	}
	return nil, false
}

// describe names the JSON value a Go type accepts, with its article: "a string",
// "an integer", "an object of strings", "an array of objects".
func describe(t reflect.Type) string {
	name := jsonKind(t)
	switch t = deref(t); {
	case t.Kind() == reflect.Map:
		return "an object of " + jsonKind(t.Elem()) + "s"
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && name == "array":
		return "an array of " + jsonKind(t.Elem()) + "s"
	}
	if strings.IndexByte("aeiou", name[0]) >= 0 {
		return "an " + name
	}
	return "a " + name
}

// jsonKind returns the JSON type name of values of t: string, integer, number, boolean,
// object, array or value.
func jsonKind(t reflect.Type) string {
	t = deref(t)
	switch {
	case t == reflect.TypeFor[Amount]():
		return "integer"
	case reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()):
		return "value" // decodes itself; its own errors are invalidInput
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Map, reflect.Struct:
		return "object"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "string" // encoding/json reads []byte from a base64 string
		}
		return "array"
	case reflect.Array:
		return "array"
	}
	return "value"
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}
