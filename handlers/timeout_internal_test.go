package handlers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRequestTimeoutMiddleware checks that a handler behind requestTimeout runs under a
// context with the configured deadline (DefaultRequestTimeout when zero), and that the
// context is cancelled with DeadlineExceeded when the handler outlives it.
func TestRequestTimeoutMiddleware(t *testing.T) {
	route := func(cfg Config, h gin.HandlerFunc) http.Handler {
		gin.SetMode(gin.ReleaseMode)
		r := gin.New()
		r.Use((&server{cfg: cfg}).requestTimeout)
		r.GET("/", h)
		return r
	}
	serve := func(h http.Handler) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		return rec
	}

	t.Run("cancelled at the deadline", func(t *testing.T) {
		var err error
		h := route(Config{RequestTimeout: 20 * time.Millisecond}, func(c *gin.Context) {
			select {
			case <-c.Request.Context().Done():
				err = c.Request.Context().Err()
			case <-time.After(10 * time.Second):
			}
			c.Status(http.StatusNoContent)
		})
		serve(h)
		assert.ErrorIs(t, err, context.DeadlineExceeded, "the handler's context must be cancelled by the request timeout")
	})

	t.Run("default deadline", func(t *testing.T) {
		var (
			deadline time.Time
			ok       bool
		)
		start := time.Now()
		serve(route(Config{}, func(c *gin.Context) {
			deadline, ok = c.Request.Context().Deadline()
			c.Status(http.StatusNoContent)
		}))
		require.True(t, ok, "a request without a configured timeout still has a deadline")
		assert.WithinRange(t, deadline, start.Add(DefaultRequestTimeout), time.Now().Add(DefaultRequestTimeout))
	})
}
