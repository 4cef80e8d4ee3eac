package handlers

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tally-ledger/tally/ledger"
)

// Overdraft limits and threshold alerts (docs/limits-and-alerts.md).

// patchAccountBody is the body of PATCH /v1/accounts/{id}: overdraft_limit is the only
// field that can change. Its values decode as int64, so floats and strings are 400s.
type patchAccountBody struct {
	OverdraftLimit map[string]int64 `json:"overdraft_limit"`
}

func (s *server) patchAccount(c *gin.Context) {
	var body patchAccountBody
	if !s.decode(c, &body) {
		return
	}
	s.write(c, http.StatusOK, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.SetOverdraftLimit(ctx, ledger.SetOverdraftLimit{Account: c.Param("id"), OverdraftLimit: body.OverdraftLimit}, opts)
	})
}

// createAlertBody is the body of POST /v1/accounts/{id}/alerts: exactly one of below and
// above (the ledger checks).
type createAlertBody struct {
	ID       string `json:"id"`
	Currency string `json:"currency"`
	Below    *int64 `json:"below"`
	Above    *int64 `json:"above"`
}

func (s *server) createAlert(c *gin.Context) {
	var body createAlertBody
	if !s.decode(c, &body) {
		return
	}
	account := c.Param("id")
	al := ledger.Alert{ID: body.ID, Account: account, Currency: body.Currency, Below: body.Below, Above: body.Above}
	s.write(c, http.StatusCreated, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.CreateAlert(ctx, ledger.CreateAlert{Alert: al}, opts)
	})
}

// alertsPage is the answer of GET /v1/accounts/{id}/alerts: every alert of the account
// (at most ledger.MaxAlerts, so no paging).
type alertsPage struct {
	Alerts []ledger.Alert `json:"alerts"`
}

func (s *server) listAlerts(c *gin.Context) {
	alerts, err := s.ledger.Alerts(c.Request.Context(), c.Param("id"))
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.JSON(http.StatusOK, alertsPage{Alerts: alerts})
}

func (s *server) deleteAlert(c *gin.Context) {
	account, alert := c.Param("id"), c.Param("alert")
	s.write(c, http.StatusOK, func(ctx context.Context, opts ledger.WriteOptions) (ledger.Receipt, error) {
		return s.ledger.DeleteAlert(ctx, account, alert, opts)
	})
}
