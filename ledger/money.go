package ledger

import (
	"math"
	"regexp"
)

var (
	idPattern       = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	currencyPattern = regexp.MustCompile(`^[A-Z][A-Z0-9_]{1,15}$`)
	idemKeyPattern  = regexp.MustCompile(`^[\x21-\x7E]{1,255}$`)
)

// ValidateID returns an error wrapping ErrInvalid unless id matches ^[A-Za-z0-9._-]{1,64}$.
// IDs become part of Redis keys, so braces, colons and spaces are never allowed.
func ValidateID(kind, id string) error {
	if !idPattern.MatchString(id) {
		return invalidf("%s must match ^[A-Za-z0-9._-]{1,64}$", kind)
	}
	return nil
}

// ValidateCurrency returns an error wrapping ErrInvalid unless c matches ^[A-Z][A-Z0-9_]{1,15}$.
func ValidateCurrency(c string) error {
	if !currencyPattern.MatchString(c) {
		return invalidf("currency must match ^[A-Z][A-Z0-9_]{1,15}$")
	}
	return nil
}

// ValidateIdempotencyKey returns an error wrapping ErrInvalid unless k is 1 to 255 printable
// ASCII characters without spaces.
func ValidateIdempotencyKey(k string) error {
	if !idemKeyPattern.MatchString(k) {
		return invalidf("Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
	}
	return nil
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
