package ledger

import (
	"regexp"
	"strings"
	"testing"
)

// The patterns the validators document, as the oracle the byte loops must agree with.
var (
	idOracle       = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	currencyOracle = regexp.MustCompile(`^[A-Z][A-Z0-9_]{1,15}$`)
	idemKeyOracle  = regexp.MustCompile(`^[\x21-\x7E]{1,255}$`)
)

// FuzzValidators checks that ValidateID, ValidateCurrency and ValidateIdempotencyKey accept
// exactly what their patterns match.
func FuzzValidators(f *testing.F) {
	for _, s := range []string{"", "a", "acct-1", "acct.1_x", "a:b", "{a}", "a b", "USD", "U", "usd", "U_1", "USD\n",
		"é", "\xff", "k\x7f", "key!~", strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("A", 16),
		strings.Repeat("A", 17), strings.Repeat("!", 255), strings.Repeat("!", 256)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidateID("id", s) == nil, idOracle.MatchString(s); got != want {
			t.Errorf("ValidateID(%q) accepts: %v, pattern: %v", s, got, want)
		}
		if got, want := ValidateCurrency(s) == nil, currencyOracle.MatchString(s); got != want {
			t.Errorf("ValidateCurrency(%q) accepts: %v, pattern: %v", s, got, want)
		}
		if got, want := ValidateIdempotencyKey(s) == nil, idemKeyOracle.MatchString(s); got != want {
			t.Errorf("ValidateIdempotencyKey(%q) accepts: %v, pattern: %v", s, got, want)
		}
	})
}
