package client

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// TestLimitsAndAlerts: overdraft limits and alerts through the client, refusals as their
// sentinels, and a BalanceAlert event decoded with BalanceAlertData.
func TestLimitsAndAlerts(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, handlers.Config{}, nil)
	c, _ := newClient(t, s.URL)

	acc, err := c.OpenAccount(ctx, OpenAccountRequest{ID: "od", OverdraftLimit: map[string]int64{"USD": 100}})
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{"USD": 100}, acc.OverdraftLimit)
	zero := int64(0)
	al, err := c.CreateAlert(ctx, "od", AlertRequest{ID: "neg", Currency: "USD", Below: &zero})
	require.NoError(t, err)
	assert.Equal(t, Alert{ID: "neg", Account: "od", Currency: "USD", Below: &zero}, *al)
	_, err = c.CreateAlert(ctx, "od", AlertRequest{ID: "neg", Currency: "USD", Above: &zero})
	requireAPIError(t, err, http.StatusConflict, ErrAlertExists)
	_, err = c.CreateAlert(ctx, "od", AlertRequest{Currency: "USD"})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)

	op, err := c.Withdraw(ctx, "od", "USD", 100)
	require.NoError(t, err)
	_, err = c.Withdraw(ctx, "od", "USD", 1)
	requireAPIError(t, err, http.StatusUnprocessableEntity, ErrInsufficientFunds)
	acc, err = c.SetOverdraftLimit(ctx, "od", map[string]int64{"USD": 150})
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{"USD": 150}, acc.OverdraftLimit)
	_, err = c.SetOverdraftLimit(ctx, "od", map[string]int64{"USD": -1})
	requireAPIError(t, err, http.StatusBadRequest, ErrInvalidRequest)

	page, err := c.Events(ctx, "od", EventsOptions{})
	require.NoError(t, err)
	var alert *Event
	for _, e := range page.Events {
		if e.Type == EventBalanceAlert {
			alert = &e
		}
	}
	require.NotNil(t, alert, "the withdrawal crossed below 0")
	var d BalanceAlertData
	require.NoError(t, json.Unmarshal(alert.Data, &d))
	assert.Equal(t, BalanceAlertData{AlertID: "neg", Currency: "USD", Direction: "below", Threshold: 0,
		AvailableBefore: 0, AvailableAfter: -100, EventID: op.OperationID, Version: 3}, d)

	alerts, err := c.Alerts(ctx, "od")
	require.NoError(t, err)
	require.Len(t, alerts, 1)
	_, err = c.DeleteAlert(ctx, "od", "neg")
	require.NoError(t, err)
	_, err = c.DeleteAlert(ctx, "od", "neg")
	requireAPIError(t, err, http.StatusNotFound, ErrNotFound)
	alerts, err = c.Alerts(ctx, "od")
	require.NoError(t, err)
	assert.Empty(t, alerts)
}
