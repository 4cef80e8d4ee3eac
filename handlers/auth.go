package handlers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// Scope is a permission an API key carries. Scopes are independent: admin does not imply
// read or write (an operator's key that replays dead letters need not move money), and
// write does not imply read.
type Scope string

// The scopes: read for every GET under /v1, write for every POST that changes the
// ledger, admin for dead-letter replay.
const (
	ScopeRead  Scope = "read"
	ScopeWrite Scope = "write"
	ScopeAdmin Scope = "admin"
)

// scopeBit is the bit of each scope in a principal's set.
var scopeBit = map[Scope]uint8{ScopeRead: 1, ScopeWrite: 2, ScopeAdmin: 4}

// Key is one API key as the keys file (--api-keys-file) holds it: a name for logs and
// rate limits, the hex SHA-256 of the token (never the token), its scopes, and an optional
// Prefix that confines it to the accounts whose IDs start with it (a tenant).
type Key struct {
	Name   string  `json:"name"`
	SHA256 string  `json:"sha256"`
	Scopes []Scope `json:"scopes"`
	Prefix string  `json:"prefix,omitempty"`
}

// HashToken returns the hex SHA-256 of a token: what a Key's SHA256 holds. A plain hash
// suffices because tokens are random (docs/security.md: 32 random bytes), not passwords.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// maxKeyName bounds a key's name, which every request's log line carries.
const maxKeyName = 64

// ParseKeys decodes and validates a keys file: a JSON array of keys, nothing else, with
// no unknown field. It returns an error naming the first bad entry: an empty or repeated
// name, a sha256 that is not 64 hex digits or repeats another key's, no or unknown scopes,
// an empty prefix (leave it out instead), admin with a prefix (admin operations are global),
// or no key at all.
func ParseKeys(data []byte) ([]Key, error) {
	// Prefix is read through a pointer: "prefix": "" is a mistake to refuse, not "no prefix".
	var raw []struct {
		Name   string  `json:"name"`
		SHA256 string  `json:"sha256"`
		Scopes []Scope `json:"scopes"`
		Prefix *string `json:"prefix"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("keys file: want a JSON array of {\"name\",\"sha256\",\"scopes\",\"prefix\"?}: %w", err)
	}
	if dec.More() {
		return nil, errors.New("keys file: data after the JSON array")
	}
	if raw == nil {
		return nil, errors.New("keys file: want a JSON array, got null")
	}
	keys := make([]Key, len(raw))
	for i, r := range raw {
		if r.Prefix != nil && *r.Prefix == "" {
			return nil, fmt.Errorf("keys file: key %d (%q): prefix is empty; leave it out for a key on every account", i, r.Name)
		}
		keys[i] = Key{Name: r.Name, SHA256: r.SHA256, Scopes: r.Scopes}
		if r.Prefix != nil {
			keys[i].Prefix = *r.Prefix
		}
	}
	if err := validateKeys(keys); err != nil {
		return nil, err
	}
	return keys, nil
}

// validateKeys checks keys as ParseKeys documents.
func validateKeys(keys []Key) error {
	if len(keys) == 0 {
		return errors.New("keys file: no keys (an empty file would lock every client out; stop the server instead)")
	}
	names, hashes := map[string]int{}, map[string]int{}
	for i, k := range keys {
		where := fmt.Sprintf("keys file: key %d (%q)", i, k.Name)
		switch {
		case k.Name == "":
			return fmt.Errorf("keys file: key %d: name is required", i)
		case len(k.Name) > maxKeyName || strings.IndexFunc(k.Name, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0:
			return fmt.Errorf("%s: name must be 1..%d printable ASCII characters without spaces", where, maxKeyName)
		case len(k.SHA256) != 2*sha256.Size:
			return fmt.Errorf("%s: sha256 must be 64 hex digits (the SHA-256 of the token), got %d characters", where, len(k.SHA256))
		case len(k.Scopes) == 0:
			return fmt.Errorf("%s: scopes is required: any of read, write, admin", where)
		case k.Prefix != "" && ledger.ValidateID("prefix", k.Prefix) != nil:
			return fmt.Errorf("%s: prefix must match ^[A-Za-z0-9._-]{1,64}$ like the account IDs it starts", where)
		}
		if _, err := hex.DecodeString(k.SHA256); err != nil {
			return fmt.Errorf("%s: sha256 is not hex: %w", where, err)
		}
		if j, ok := names[k.Name]; ok {
			return fmt.Errorf("%s: name repeats key %d's", where, j)
		}
		hash := strings.ToLower(k.SHA256)
		if j, ok := hashes[hash]; ok {
			return fmt.Errorf("%s: sha256 repeats key %d's (one token, two keys)", where, j)
		}
		names[k.Name], hashes[hash] = i, i
		seen := map[Scope]bool{}
		for _, s := range k.Scopes {
			if _, ok := scopeBit[s]; !ok {
				return fmt.Errorf("%s: unknown scope %q (want read, write or admin)", where, s)
			}
			if seen[s] {
				return fmt.Errorf("%s: scope %q repeats", where, s)
			}
			seen[s] = true
		}
		if seen[ScopeAdmin] && k.Prefix != "" {
			return fmt.Errorf("%s: the admin scope cannot have a prefix: admin operations act on every tenant", where)
		}
	}
	return nil
}

// principal is who a request acts as: a key from the keys file, or anonymous when the
// server has no keys.
type principal struct {
	name   string
	scopes uint8
	prefix string
}

func (p *principal) has(s Scope) bool { return p.scopes&scopeBit[s] != 0 }

// owns reports whether the principal may touch the account id.
func (p *principal) owns(id string) bool { return strings.HasPrefix(id, p.prefix) }

// anonymousName is the key name logged (and rate-limited) for requests to a server
// without keys.
const anonymousName = "anonymous"

// Keys is the set of API keys a server accepts. Replace swaps it atomically (SIGHUP
// reload): a request sees the old set or the new one, never a mix.
type Keys struct {
	p atomic.Pointer[map[[sha256.Size]byte]*principal]
}

// NewKeys returns the key set keys, or an error as ParseKeys documents.
func NewKeys(keys []Key) (*Keys, error) {
	k := &Keys{}
	if err := k.Replace(keys); err != nil {
		return nil, err
	}
	return k, nil
}

// Replace validates keys and, when they are valid, makes them the accepted set; otherwise
// it returns the error and the set in force stays.
func (k *Keys) Replace(keys []Key) error {
	if err := validateKeys(keys); err != nil {
		return err
	}
	m := make(map[[sha256.Size]byte]*principal, len(keys))
	for _, key := range keys {
		var h [sha256.Size]byte
		_, _ = hex.Decode(h[:], []byte(key.SHA256)) // validated
		p := &principal{name: key.Name, prefix: key.Prefix}
		for _, s := range key.Scopes {
			p.scopes |= scopeBit[s]
		}
		m[h] = p
	}
	k.p.Store(&m)
	return nil
}

// Len returns how many keys are accepted (0 for a nil set).
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	if m := k.p.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// lookup returns the principal of token, or nil. The token is hashed before the map
// lookup, so the lookup's timing says nothing an attacker can use about stored tokens.
func (k *Keys) lookup(token string) *principal {
	m := k.p.Load()
	if m == nil || token == "" {
		return nil
	}
	return (*m)[sha256.Sum256([]byte(token))]
}

var (
	specForbidden   = problemSpec{http.StatusForbidden, "forbidden", "Forbidden"}
	specRateLimited = problemSpec{http.StatusTooManyRequests, "rate_limited", "Too many requests"}
)

// principalKey is the gin context key of the request's principal.
const principalKey = "tally.principal"

// bearer returns the token of an "Authorization: Bearer <token>" header (the scheme is
// case-insensitive, RFC 9110 §11.1).
func bearer(c *gin.Context) string {
	scheme, token, ok := strings.Cut(c.GetHeader("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// authenticate finds the request's principal (401 without a known key), then takes a token
// from its rate-limit bucket (429 when empty). Without keys every request is anonymous:
// read and write, admin only with InsecureAdmin.
func (s *server) authenticate(c *gin.Context) {
	p := s.anonymous
	if s.cfg.Keys != nil {
		if p = s.cfg.Keys.lookup(bearer(c)); p == nil {
			challenge := `Bearer realm="tally"`
			if c.GetHeader("Authorization") != "" {
				challenge += `, error="invalid_token"`
			}
			c.Header("WWW-Authenticate", challenge)
			writeProblem(c, specUnauthed, "send Authorization: Bearer <API key>")
			return
		}
	}
	c.Set(principalKey, p)
	if s.limiter != nil {
		if ok, retry := s.limiter.allow(p.name); !ok {
			c.Header("Retry-After", retry)
			writeProblem(c, specRateLimited, "this API key is over its rate limit; retry after Retry-After seconds")
			return
		}
	}
	c.Next()
}

// principalOf returns the principal authenticate set.
func principalOf(c *gin.Context) *principal {
	p, _ := c.Get(principalKey)
	pr, _ := p.(*principal)
	return pr
}

// keyName returns the name of the request's key, "" before authentication.
func keyName(c *gin.Context) string {
	if p := principalOf(c); p != nil {
		return p.name
	}
	return ""
}

// need refuses with 403 a request whose key lacks scope.
func (s *server) need(scope Scope) gin.HandlerFunc {
	return func(c *gin.Context) {
		if p := principalOf(c); p == nil || !p.has(scope) {
			detail := fmt.Sprintf("this API key lacks the %s scope", scope)
			if s.cfg.Keys == nil && scope == ScopeAdmin {
				detail = "admin operations need an API key with the admin scope (--api-keys-file); a loopback server without keys allows them only with --insecure-admin"
			}
			writeProblem(c, specForbidden, detail)
			return
		}
		c.Next()
	}
}

// global refuses with 403 a tenant key (one with a prefix) on routes about every tenant
// (the relay's state).
func (s *server) global(c *gin.Context) {
	if p := principalOf(c); p == nil || p.prefix != "" {
		writeProblem(c, specForbidden, "a tenant key (one with a prefix) cannot see or change the state of every tenant")
		return
	}
	c.Next()
}

// hideFn returns the error the ledger answers for a missing account on a route: a tenant
// key is answered the same for another tenant's account, so an answer never says whether
// an account of another tenant exists.
type hideFn func(c *gin.Context) error

var (
	// hideBare: GET /v1/accounts/{id} and its events.
	hideBare hideFn = func(*gin.Context) error { return ledger.ErrAccountNotFound }
	// hideNamed: writes to /v1/accounts/{id}/...
	hideNamed hideFn = func(c *gin.Context) error { return errAccountNotFound(c.Param("id")) }
	// hideHold: /v1/accounts/{id}/holds/{hold}..., where a missing account is a missing hold.
	hideHold hideFn = func(c *gin.Context) error {
		return fmt.Errorf("%w: hold %s of %s", ledger.ErrNotFound, c.Param("hold"), c.Param("id"))
	}
)

// errAccountNotFound is the ledger's error for the missing account id.
func errAccountNotFound(id string) error { return fmt.Errorf("%w: %s", ledger.ErrAccountNotFound, id) }

// own answers a request on the path's account (:id) that the key may not touch as the
// ledger answers a missing account (hide).
func (s *server) own(hide hideFn) gin.HandlerFunc {
	return func(c *gin.Context) {
		if p := principalOf(c); p == nil || !p.owns(c.Param("id")) {
			s.writeError(c, hide(c))
			return
		}
		c.Next()
	}
}

// foreign returns the first of ids the request's key may not touch, and true; or "", false
// when it may touch them all. Empty IDs (fields an operation does not use) are skipped.
// Handlers answer such an ID with errAccountNotFound, as for a missing account.
func foreign(c *gin.Context, ids ...string) (string, bool) {
	p := principalOf(c)
	for _, id := range ids {
		if id != "" && (p == nil || !p.owns(id)) {
			return id, true
		}
	}
	return "", false
}

// mayOpen writes a 403 and returns false when the key may not open an account with id:
// the ID, not the ledger, says so, which reveals nothing about other tenants' accounts.
func mayOpen(c *gin.Context, id string) bool {
	if _, bad := foreign(c, id); bad {
		prefix := ""
		if p := principalOf(c); p != nil {
			prefix = p.prefix
		}
		writeProblem(c, specForbidden, fmt.Sprintf("this API key may only open accounts whose IDs start with %q", prefix))
		return false
	}
	return true
}
