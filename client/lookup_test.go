package client

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// TestMetadataLookup: the client finds transfers and accounts by one metadata pair, pages
// by cursor (and AllTransfersByMetadata follows it), and gets a 400 *Error for a bad query.
func TestMetadataLookup(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	c, _ := newClient(t, s.URL)
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("acc%d", i)
		_, err := c.OpenAccount(ctx, OpenAccountRequest{ID: id, Metadata: map[string]string{"customer": "42"}})
		require.NoError(t, err)
		_, err = c.Deposit(ctx, id, "USD", 10)
		require.NoError(t, err)
	}
	for i := range 4 {
		id := fmt.Sprintf("tr%d", i)
		_, err := c.CreateTransfer(ctx, TransferRequest{ID: id, From: fmt.Sprintf("acc%d", i), To: fmt.Sprintf("acc%d", i+1),
			Currency: "USD", Amount: 1, Metadata: map[string]string{"order_id": "123"}})
		require.NoError(t, err)
		want = append(want, id)
	}
	page, err := c.TransfersByMetadata(ctx, "order_id", "123", LookupOptions{Limit: 3})
	require.NoError(t, err)
	require.Len(t, page.Transfers, 3)
	require.NotEmpty(t, page.Next)
	page, err = c.TransfersByMetadata(ctx, "order_id", "123", LookupOptions{Limit: 3, Cursor: page.Next})
	require.NoError(t, err)
	require.Len(t, page.Transfers, 1)
	assert.Equal(t, "tr3", page.Transfers[0].ID)
	assert.Empty(t, page.Next)

	var got []string
	for tr, err := range c.AllTransfersByMetadata(ctx, "order_id", "123", 1) {
		require.NoError(t, err)
		got = append(got, tr.ID)
	}
	assert.Equal(t, want, got)

	accs, err := c.AccountsByMetadata(ctx, "customer", "42", LookupOptions{})
	require.NoError(t, err)
	require.Len(t, accs.Accounts, 5)
	assert.Equal(t, "acc0", accs.Accounts[0].ID)
	assert.Equal(t, "42", accs.Accounts[0].Metadata["customer"])

	_, err = c.AccountsByMetadata(ctx, "customer", "42", LookupOptions{Cursor: "!!"})
	var apiErr *Error
	require.True(t, errors.As(err, &apiErr), "%v", err)
	assert.Equal(t, 400, apiErr.Status)
}
