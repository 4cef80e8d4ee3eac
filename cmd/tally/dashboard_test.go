package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// dashboardPath is the Grafana dashboard docker-compose.yml provisions.
const dashboardPath = "../../deploy/grafana/dashboards/tally.json"

// dashboardDatasourceUID is the uid of the Prometheus datasource the provisioning defines
// (deploy/grafana/provisioning/datasources/prometheus.yml).
const dashboardDatasourceUID = "prometheus"

// dashboardQuery is one PromQL expression of a dashboard panel.
type dashboardQuery struct {
	panel string
	expr  string
}

// dashboardQueries reads the dashboard and returns every panel's expressions. It fails the
// test for a panel or target without the provisioned datasource, or panel IDs used twice.
func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	require.NoError(t, err)
	type datasource struct{ Type, UID string }
	var d struct {
		UID    string
		Panels []struct {
			ID         int
			Type       string
			Title      string
			Datasource *datasource
			Targets    []struct {
				Expr       string
				Datasource *datasource
			}
		}
	}
	require.NoError(t, json.Unmarshal(raw, &d))
	require.NotEmpty(t, d.UID, "a provisioned dashboard keeps its uid (links survive reloads)")
	ids := map[int]bool{}
	var out []dashboardQuery
	for _, p := range d.Panels {
		require.False(t, ids[p.ID], "panel id %d used twice", p.ID)
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		require.NotNil(t, p.Datasource, "panel %q has no datasource", p.Title)
		require.Equal(t, datasource{"prometheus", dashboardDatasourceUID}, *p.Datasource, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			require.NotNil(t, tg.Datasource, "panel %q: a target without a datasource", p.Title)
			require.Equal(t, dashboardDatasourceUID, tg.Datasource.UID, "panel %q", p.Title)
			out = append(out, dashboardQuery{panel: p.Title, expr: tg.Expr})
		}
	}
	return out
}

var (
	// promName matches the metric names of Tally's own series in an expression.
	promName = regexp.MustCompile(`\btally_[a-zA-Z0-9_]+`)
	// promBy matches a PromQL aggregation's grouping labels: "by (a, b)".
	promBy = regexp.MustCompile(`\bby\s*\(([^)]*)\)`)
	// promMatcher matches a label matcher inside a selector: `name="value"` or `name=~"re"`.
	promMatcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// scrapeFamilies fetches url (Prometheus text format) and returns its metric families.
func scrapeFamilies(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return mfs
}

// scrape is the union of several processes' /metrics, by series name as PromQL sees it
// (a histogram family h is the series h_bucket, h_sum and h_count).
type scrape map[string][]*dto.Metric

func scrapeAll(t *testing.T, urls ...string) scrape {
	t.Helper()
	out := scrape{}
	for _, u := range urls {
		for name, mf := range scrapeFamilies(t, u) {
			names := []string{name}
			if mf.GetType() == dto.MetricType_HISTOGRAM {
				names = []string{name + "_bucket", name + "_sum", name + "_count"}
			}
			for _, n := range names {
				out[n] = append(out[n], mf.GetMetric()...)
			}
		}
	}
	return out
}

// labels returns the label names series name carries (le for a histogram's buckets).
func (s scrape) labels(name string) map[string]bool {
	out := map[string]bool{}
	for _, m := range s[name] {
		for _, lp := range m.GetLabel() {
			out[lp.GetName()] = true
		}
	}
	if strings.HasSuffix(name, "_bucket") {
		out["le"] = true
	}
	return out
}

// sum adds the values of series name whose labels include want (name=value pairs).
func (s scrape) sum(name string, want ...string) float64 {
	var v float64
next:
	for _, m := range s[name] {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if have[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.GetHistogram() != nil && strings.HasSuffix(name, "_sum"):
			v += m.GetHistogram().GetSampleSum()
		case m.GetHistogram() != nil:
			v += float64(m.GetHistogram().GetSampleCount())
		default:
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// TestDashboardMetricsExist starts a real `tally serve` and `tally relay` on a real
// redis-server, drives deposits, a cross-partition transfer, a hold that expires and a
// poison event the webhook refuses (a dead letter), scrapes both processes' /metrics and
// requires: every metric the Grafana dashboard queries is exposed with the labels the
// dashboard groups and filters by; the route label is gin's route template, not the path;
// and the families docs/observability.md lists carry the values the traffic implies
// (backlog back to 0 after delivery, the dead letter counted in its partition, the expired
// hold, the transfer created and completed).
func TestDashboardMetricsExist(t *testing.T) {
	queries := dashboardQueries(t)
	require.NotEmpty(t, queries)
	t.Logf("the dashboard has %d queries", len(queries))

	bin := buildTally(t)
	srv := redistest.MustStart(t)
	const partitions = 4
	// A ledger with the processes' settings tells the test which partition an account is in.
	probe, err := ledger.New(srv.Client(), ledger.Config{Partitions: partitions})
	require.NoError(t, err)
	alice, bob := "alice", ""
	for i := 0; bob == ""; i++ {
		if id := fmt.Sprintf("bob%d", i); probe.Partition(id) != probe.Partition(alice) {
			bob = id
		}
	}
	const poison = "poison"

	// The webhook refuses (400: permanent) every batch with an event of the poison account;
	// the relay retries the batch's entries one by one and dead-letters the poison ones.
	secret := []byte("whsec-dashboard")
	var mu sync.Mutex
	delivered := 0
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !outbox.VerifySignature(secret, body, r.Header.Get(outbox.WebhookSignatureHeader)) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if bytes.Contains(body, []byte(`"account":"`+poison+`"`)) {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		payloads, _ := outbox.DecodeWebhookBody(body)
		mu.Lock()
		delivered += len(payloads)
		mu.Unlock()
	}))
	t.Cleanup(hook.Close)

	redisArgs := []string{"--redis", srv.Addr(), "--partitions", fmt.Sprint(partitions)}
	serve := startProc(t, bin, append(redisArgs, "--relay=false")...)
	metricsAddr := freeAddr(t)
	relay, _ := startRelayProc(t, bin, append(redisArgs, "--metrics-addr", metricsAddr,
		"--webhook", hook.URL, "--webhook-secret", string(secret), "--relay-max-attempts", "2")...)
	urls := []string{serve.base + "/metrics", "http://" + metricsAddr + "/metrics"}

	must := func(code int, body string, want int) {
		t.Helper()
		require.Equal(t, want, code, "%s", body)
	}
	for _, id := range []string{alice, bob, poison} {
		code, body := post(t, serve.base+"/v1/accounts", `{"id":"`+id+`"}`)
		must(code, body, 201)
		for range 3 {
			code, body := post(t, serve.base+"/v1/accounts/"+id+"/deposits", `{"currency":"USD","amount":100}`)
			must(code, body, 201)
		}
	}
	code, body := post(t, serve.base+"/v1/transfers", `{"id":"t1","from":"`+alice+`","to":"`+bob+`","currency":"USD","amount":10}`)
	must(code, body, 201)
	code, body = post(t, serve.base+"/v1/accounts/"+alice+"/holds", `{"id":"h1","currency":"USD","amount":5,"timeout_seconds":1}`)
	must(code, body, 201)
	code, body = post(t, serve.base+"/v1/accounts/nobody/deposits", `{"currency":"USD","amount":1}`)
	must(code, body, 404)

	// Delivery finishes (backlog 0 everywhere, the poison account's 4 events dead-lettered)
	// and the sweeper records the hold expired.
	var s scrape
	require.Eventually(t, func() bool {
		s = scrapeAll(t, urls...)
		return s.sum("tally_outbox_status_up") == 2 &&
			s.sum("tally_outbox_backlog") == 0 && s.sum("tally_outbox_pending") == 0 &&
			s.sum("tally_outbox_dead_letters") == 2*4 && // serve and relay both report the 4
			s.sum("tally_ledger_holds_total", "state", "expired") == 1
	}, 30*time.Second, 100*time.Millisecond, "delivery settles and the hold expires")

	t.Run("every dashboard query has its series", func(t *testing.T) {
		for _, q := range queries {
			names := promName.FindAllString(q.expr, -1)
			require.NotEmpty(t, names, "panel %q: %s queries no tally_ metric", q.panel, q.expr)
			have := map[string]bool{}
			for _, n := range names {
				_, ok := s[n]
				if assert.True(t, ok, "panel %q: %s is not exposed by serve or relay", q.panel, n) {
					for l := range s.labels(n) {
						have[l] = true
					}
				}
			}
			var used []string
			for _, m := range promBy.FindAllStringSubmatch(q.expr, -1) {
				for l := range strings.SplitSeq(m[1], ",") {
					used = append(used, strings.TrimSpace(l))
				}
			}
			for _, m := range promMatcher.FindAllStringSubmatch(q.expr, -1) {
				used = append(used, m[1])
			}
			for _, l := range used {
				assert.True(t, have[l], "panel %q: label %q is on none of %v", q.panel, l, names)
			}
		}
	})

	t.Run("values", func(t *testing.T) {
		// HTTP: labelled by route template, never by the raw path.
		assert.Equal(t, 9.0, s.sum("tally_http_requests_total", "route", "/v1/accounts/:id/deposits", "code", "201"))
		assert.Equal(t, 1.0, s.sum("tally_http_requests_total", "route", "/v1/accounts/:id/deposits", "code", "404"))
		for _, m := range s["tally_http_requests_total"] {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "route" {
					assert.NotContains(t, lp.GetValue(), alice, "route is the template")
				}
			}
		}
		assert.Positive(t, s.sum("tally_http_request_duration_seconds_count", "route", "/v1/transfers"))
		// Ledger write path.
		assert.Positive(t, s.sum("tally_ledger_commits_total"))
		assert.Equal(t, s.sum("tally_ledger_commits_total"), s.sum("tally_ledger_commit_requests_count"), "one observation per commit")
		assert.Equal(t, s.sum("tally_ledger_operations_total"), s.sum("tally_ledger_commit_requests_sum"), "adding up to the requests committed")
		assert.GreaterOrEqual(t, s.sum("tally_ledger_commit_accounts_sum"), s.sum("tally_ledger_commit_accounts_count"), "a commit writes at least one account")
		assert.Contains(t, s, "tally_ledger_version_conflicts_total")
		assert.Contains(t, s, "tally_ledger_retries_total")
		assert.Equal(t, 9.0, s.sum("tally_ledger_events_total", "type", ledger.EventDeposited))
		assert.Equal(t, 1.0, s.sum("tally_ledger_transfers_total", "state", "created"))
		assert.Equal(t, 1.0, s.sum("tally_ledger_transfers_total", "state", "completed"))
		assert.Zero(t, s.sum("tally_ledger_transfers_pending"))
		assert.Equal(t, 1.0, s.sum("tally_ledger_holds_total", "state", "placed"))
		assert.Zero(t, s.sum("tally_ledger_holds_pending"))
		// Leases: the relay's partition leases were acquired and waited for.
		assert.Positive(t, s.sum("tally_lock_wait_seconds_count", "lease", "partition"))
		// Outbox: the poison account's partition holds its dead letters, the others none.
		pp := fmt.Sprint(probe.Partition(poison))
		assert.Equal(t, 4.0, s.sum("tally_outbox_dead_lettered_total", "partition", pp))
		assert.Equal(t, 2*4.0, s.sum("tally_outbox_dead_letters", "partition", pp))
		assert.Zero(t, s.sum("tally_outbox_oldest_unacked_age_seconds"), "no lag once delivered")
		mu.Lock()
		defer mu.Unlock()
		// 3 accounts × (opened + 3 deposits) + debit + credit + hold placed + expired, minus
		// the poison account's 4.
		assert.Equal(t, 12, delivered)
		assert.Equal(t, float64(delivered), s.sum("tally_outbox_delivered_total"))
	})
	serve.stop(t)
	relay.stop(t)
}

// TestLogFormat: --log-format json writes one JSON object per line with the record's
// attributes; text writes key=value; auto is JSON when stderr is not a terminal (a pipe, a
// file, a buffer); anything else is refused before the logger exists.
func TestLogFormat(t *testing.T) {
	for _, tc := range []struct{ format, want string }{
		{"json", `{"time":`},
		{"auto", `{"time":`},
		{"text", `time=`},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var b bytes.Buffer
			log, err := newLogger(&b, "info", tc.format)
			require.NoError(t, err)
			log.Info("request", "request_id", "r-1", "status", 201)
			log.Debug("below the level")
			require.True(t, strings.HasPrefix(b.String(), tc.want), "%s", b.String())
			assert.Equal(t, 1, strings.Count(b.String(), "\n"), "one line")
			if tc.want == `{"time":` {
				var rec map[string]any
				require.NoError(t, json.Unmarshal(b.Bytes(), &rec))
				assert.Equal(t, "INFO", rec["level"])
				assert.Equal(t, "request", rec["msg"])
				assert.Equal(t, "r-1", rec["request_id"])
				assert.Equal(t, 201.0, rec["status"])
			}
		})
	}
	_, err := newLogger(io.Discard, "info", "xml")
	require.ErrorContains(t, err, "--log-format must be text, json or auto")
}
