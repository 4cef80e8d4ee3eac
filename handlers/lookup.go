package handlers

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// metadataParam starts the query parameter of a metadata lookup: ?metadata.<key>=<value>.
const metadataParam = "metadata."

// metadataQuery reads a lookup's query: exactly one metadata.<key>=<value>, and optionally
// limit and cursor, each once; anything else is refused, so that a typo is not silently a
// different question. A tenant key's lookup is confined to its prefix.
func metadataQuery(c *gin.Context) (ledger.MetadataQuery, error) {
	var q ledger.MetadataQuery
	params, err := url.ParseQuery(c.Request.URL.RawQuery)
	if err != nil {
		return q, fmt.Errorf("malformed query string: %w", err)
	}
	pairs := 0
	for name, vals := range params {
		if len(vals) > 1 {
			return q, fmt.Errorf("query parameter %q is given more than once", name)
		}
		switch {
		case name == "limit" || name == "cursor":
		case strings.HasPrefix(name, metadataParam):
			pairs++
			q.Key, q.Value = name[len(metadataParam):], vals[0]
		default:
			return q, fmt.Errorf("unknown query parameter %q: a lookup takes metadata.KEY=VALUE, limit and cursor", name)
		}
	}
	if pairs != 1 {
		return q, fmt.Errorf("give exactly one metadata.KEY=VALUE parameter (got %d): a lookup matches one pair, exactly", pairs)
	}
	limit, err := queryLimit(c, ledger.DefaultLookupLimit, ledger.MaxLookupLimit)
	if err != nil {
		return q, err
	}
	q.Limit, q.Cursor = limit, params.Get("cursor")
	if p := principalOf(c); p != nil {
		q.Prefix = p.prefix
	}
	return q, nil
}

// listTransfers answers GET /v1/transfers?metadata.<key>=<value>: the transfers created
// with that pair, in ID order. A tenant key sees only transfers between its own accounts
// (the ledger confines the query; the filter here is a second line).
func (s *server) listTransfers(c *gin.Context) {
	q, err := metadataQuery(c)
	if err != nil {
		writeProblem(c, specInvalid, err.Error())
		return
	}
	page, err := s.ledger.TransfersByMetadata(c.Request.Context(), q)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, page)
}

// listAccounts answers GET /v1/accounts?metadata.<key>=<value>: the accounts opened with
// that pair, in ID order; a tenant key sees only its own.
func (s *server) listAccounts(c *gin.Context) {
	q, err := metadataQuery(c)
	if err != nil {
		writeProblem(c, specInvalid, err.Error())
		return
	}
	page, err := s.ledger.AccountsByMetadata(c.Request.Context(), q)
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, page)
}
