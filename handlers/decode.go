package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"
)

// Amount is a money amount in minor units as it appears in a request body: a JSON integer
// literal only. Floats (1.0), exponents (1e3), strings ("100") and values outside int64
// are rejected; money is never parsed through a float.
type Amount struct {
	Value int64
	Set   bool
}

// UnmarshalJSON accepts a bare JSON integer that fits int64.
func (a *Amount) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return errors.New("amount must be an integer, not null")
	}
	for i, ch := range b {
		if (ch < '0' || ch > '9') && !(i == 0 && ch == '-') {
			return errors.New("amount must be an integer in minor units (no quotes, decimals or exponents)")
		}
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return errors.New("amount is out of range (int64 minor units)")
	}
	a.Value, a.Set = v, true
	return nil
}

// decode reads exactly one JSON object into v, rejecting unknown fields, trailing data and
// oversized bodies. On failure it writes the problem and returns false.
func (s *server) decode(c *gin.Context, v any) bool {
	dec := json.NewDecoder(c.Request.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("unexpected data after the JSON object")
	}
	if err == nil {
		if _, rerr := dec.Token(); rerr != io.EOF {
			err = errors.New("unexpected data after the JSON object")
		}
	}
	if err == nil {
		return true
	}
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		writeProblem(c, specTooLarge, fmt.Sprintf("request bodies are limited to %d bytes", tooLarge.Limit))
	case errors.Is(err, io.EOF):
		writeProblem(c, specInvalid, "request body must be a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		writeProblem(c, specInvalid, "malformed JSON: unexpected end of input")
	case errors.As(err, &syntax):
		writeProblem(c, specInvalid, fmt.Sprintf("malformed JSON at byte %d", syntax.Offset))
	case errors.As(err, &typ):
		writeProblem(c, specInvalid, fmt.Sprintf("field %q must be of type %s", typ.Field, typ.Type))
	default:
		writeProblem(c, specInvalid, err.Error())
	}
	return false
}
