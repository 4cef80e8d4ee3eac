package client

import (
	"context"
	"iter"
	"net/http"
	"net/url"
	"strconv"
)

// LookupOptions selects a page of a metadata lookup.
type LookupOptions struct {
	Cursor string // the Next of the previous page; "" for the first
	Limit  int    // page size 1..1000; 0 for the server's default (100)
}

// TransfersPage is one page of transfers found by metadata.
type TransfersPage struct {
	Transfers []Transfer `json:"transfers"`
	// Next is the Cursor of the next page; "" on the last page.
	Next string `json:"next_cursor,omitempty"`
}

// AccountsPage is one page of accounts found by metadata.
type AccountsPage struct {
	Accounts []Account `json:"accounts"`
	// Next is the Cursor of the next page; "" on the last page.
	Next string `json:"next_cursor,omitempty"`
}

// lookupQuery is the query of GET /v1/transfers or /v1/accounts for key=value.
func lookupQuery(key, value string, opt LookupOptions) url.Values {
	q := url.Values{"metadata." + key: {value}}
	if opt.Cursor != "" {
		q.Set("cursor", opt.Cursor)
	}
	if opt.Limit > 0 {
		q.Set("limit", strconv.Itoa(opt.Limit))
	}
	return q
}

// TransfersByMetadata returns one page of the transfers created with metadata key = value
// (exact match), in ID order. With a tenant key a page may hold fewer than opt.Limit
// transfers before the last one: follow Next until it is "". A malformed query is an
// *Error with status 400.
func (c *Client) TransfersByMetadata(ctx context.Context, key, value string, opt LookupOptions) (*TransfersPage, error) {
	var p TransfersPage
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "transfers"), query: lookupQuery(key, value, opt)}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// AccountsByMetadata returns one page of the accounts opened with metadata key = value
// (exact match), in ID order; see TransfersByMetadata.
func (c *Client) AccountsByMetadata(ctx context.Context, key, value string, opt LookupOptions) (*AccountsPage, error) {
	var p AccountsPage
	if err := c.do(ctx, request{method: http.MethodGet, path: escape("v1", "accounts"), query: lookupQuery(key, value, opt)}, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// AllTransfersByMetadata iterates over every transfer created with metadata key = value,
// page by page (pageSize per request; 0 for the server's default). An error ends the
// iteration after it is yielded.
func (c *Client) AllTransfersByMetadata(ctx context.Context, key, value string, pageSize int) iter.Seq2[Transfer, error] {
	return func(yield func(Transfer, error) bool) {
		opt := LookupOptions{Limit: pageSize}
		for {
			page, err := c.TransfersByMetadata(ctx, key, value, opt)
			if err != nil {
				yield(Transfer{}, err)
				return
			}
			for _, t := range page.Transfers {
				if !yield(t, nil) {
					return
				}
			}
			if page.Next == "" {
				return
			}
			opt.Cursor = page.Next
		}
	}
}
