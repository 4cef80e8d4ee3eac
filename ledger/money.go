package ledger

import (
	"math"
)

// The validators below check bytes in a loop rather than with a regexp: they run for every
// request, and a regexp match cost ~2 % of a deposit's CPU in the library. FuzzValidators
// checks them against the patterns they document.

// ValidateID returns an error wrapping ErrInvalid unless id matches ^[A-Za-z0-9._-]{1,64}$.
// IDs become part of Redis keys, so braces, colons and spaces are never allowed.
func ValidateID(kind, id string) error {
	if !validID(id) {
		return invalidf("%s must match ^[A-Za-z0-9._-]{1,64}$", kind)
	}
	return nil
}

func validID(id string) bool {
	if len(id) < 1 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// ValidateCurrency returns an error wrapping ErrInvalid unless c matches ^[A-Z][A-Z0-9_]{1,15}$.
func ValidateCurrency(c string) error {
	if !validCurrency(c) {
		return invalidf("currency must match ^[A-Z][A-Z0-9_]{1,15}$")
	}
	return nil
}

func validCurrency(c string) bool {
	if len(c) < 2 || len(c) > 16 || c[0] < 'A' || c[0] > 'Z' {
		return false
	}
	for i := 1; i < len(c); i++ {
		if b := c[i]; (b < 'A' || b > 'Z') && (b < '0' || b > '9') && b != '_' {
			return false
		}
	}
	return true
}

// ValidateIdempotencyKey returns an error wrapping ErrInvalid unless k is 1 to 255 printable
// ASCII characters without spaces.
func ValidateIdempotencyKey(k string) error {
	if !validIdempotencyKey(k) {
		return invalidf("Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
	}
	return nil
}

// validIdempotencyKey reports whether k matches ^[\x21-\x7E]{1,255}$.
func validIdempotencyKey(k string) bool {
	if len(k) < 1 || len(k) > 255 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7E {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// validateAmount returns an error wrapping ErrInvalid unless amount is positive.
func validateAmount(amount int64) error {
	if amount <= 0 {
		return invalidf("amount must be a positive integer in minor units")
	}
	return nil
}

// add returns a+b or ErrOverflow when the sum leaves the int64 range.
func add(a, b int64) (int64, error) {
	if (b > 0 && a > math.MaxInt64-b) || (b < 0 && a < math.MinInt64-b) {
		return 0, ErrOverflow
	}
	return a + b, nil
}

// sub returns a-b or ErrOverflow when the difference leaves the int64 range.
func sub(a, b int64) (int64, error) {
	if (b < 0 && a > math.MaxInt64+b) || (b > 0 && a < math.MinInt64+b) {
		return 0, ErrOverflow
	}
	return a - b, nil
}
