package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// The compose file and what it mounts live at the repository's top level.
const repoRoot = "../.."

// demoToken is the API token of deploy/api-keys.demo.json, published in docs/deploy.md so
// that the compose stack works out of the box. It is not a secret.
const demoToken = "demo-only-tally-token-do-not-use-in-production"

// loadCompose loads dir/docker-compose.yml with the compose-spec loader (the library docker
// compose uses): YAML, the compose schema, interpolation with an empty environment (the
// file's defaults) and consistency. profiles "*" enables every service.
func loadCompose(dir string, profiles ...string) (*types.Project, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(abs, "docker-compose.yml")
	content, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	details := types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: path, Content: content}},
		Environment: types.Mapping{},
	}
	return loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("tally", true)
		o.Profiles = profiles
	})
}

// composeCommand is a tally service's command line: serve or relay, its flags (environment
// TALLY_* variables first as flags, so that the command line wins as with parse), and the
// flags as parsed by tally itself.
type composeCommand struct {
	name  string // serve | relay
	args  []string
	serve *serveFlags
	relay *relayCmdFlags
}

// isTally reports whether svc runs the tally image (built from the Dockerfile).
func isTally(svc types.ServiceConfig) bool {
	return svc.Build != nil || strings.HasPrefix(svc.Image, "tally")
}

// tallyCommand parses a tally service's command with serve's or relay's own parsing.
func tallyCommand(svc types.ServiceConfig) (composeCommand, error) {
	if len(svc.Entrypoint) > 0 {
		return composeCommand{}, errors.New("overrides the image's entrypoint (tally)")
	}
	if len(svc.Command) == 0 {
		return composeCommand{}, errors.New("has no command")
	}
	var env []string
	for k, v := range svc.Environment {
		name, ok := strings.CutPrefix(k, "TALLY_")
		if !ok || v == nil {
			continue
		}
		env = append(env, "--"+strings.ToLower(strings.ReplaceAll(name, "_", "-"))+"="+*v)
	}
	sort.Strings(env)
	c := composeCommand{name: svc.Command[0], args: append(env, svc.Command[1:]...)}
	var err error
	switch c.name {
	case "serve":
		c.serve, _, err = parseServe(c.args, io.Discard)
	case "relay":
		c.relay, _, err = parseRelay(c.args, io.Discard)
	default:
		err = fmt.Errorf("runs %q: want serve or relay", c.name)
	}
	if err != nil {
		return c, fmt.Errorf("tally %s %s: %w", c.name, strings.Join(c.args, " "), err)
	}
	return c, nil
}

// redisAddrs are the Redis servers the command connects to, by role.
func (c composeCommand) redisAddrs() map[string][]string {
	var r redisFlags
	var l lockFlags
	if c.serve != nil {
		r, l = c.serve.redis, c.serve.lock
	} else {
		r, l = c.relay.redis, c.relay.lock
	}
	out := map[string][]string{"--lock-redis": splitList(l.masters), "--redis-cluster": splitList(r.cluster)}
	if r.addr != "" {
		out["--redis"] = []string{r.addr}
	}
	return out
}

// metricsAddr is the address the command serves /metrics on ("" for none).
func (c composeCommand) metricsAddr() string {
	if c.serve != nil {
		return c.serve.addr
	}
	return c.relay.metricsAddr
}

// redisPort is the port a redis-server service listens on (--port, default 6379), or 0
// when svc does not run redis-server.
func redisPort(svc types.ServiceConfig) int {
	if len(svc.Command) == 0 || svc.Command[0] != "redis-server" {
		return 0
	}
	port := 6379
	for i, a := range svc.Command {
		if a == "--port" && i+1 < len(svc.Command) {
			port, _ = strconv.Atoi(svc.Command[i+1])
		}
	}
	return port
}

// redisArg returns the value of a redis-server option in svc's command.
func redisArg(svc types.ServiceConfig, name string) string {
	for i, a := range svc.Command {
		if a == "--"+name && i+1 < len(svc.Command) {
			return svc.Command[i+1]
		}
	}
	return ""
}

// hostPath maps a path inside svc's container to the host path a bind mount gives it, or
// "" when no bind mount covers it.
func hostPath(svc types.ServiceConfig, container string) string {
	for _, v := range svc.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if rel, err := filepath.Rel(v.Target, container); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(v.Source, rel)
		}
	}
	return ""
}

// dependsOn reports whether from depends on to, directly or through other services.
func dependsOn(p *types.Project, from, to string) bool {
	seen := map[string]bool{}
	var walk func(string) bool
	walk = func(s string) bool {
		if seen[s] {
			return false
		}
		seen[s] = true
		svc, err := p.GetService(s)
		if err != nil {
			return false
		}
		for d := range svc.DependsOn {
			if d == to || walk(d) {
				return true
			}
		}
		return false
	}
	return walk(from)
}

// splitHostPort splits host:port with a numeric port.
func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}

// composeProblems checks the wiring of the compose file in dir (every profile) and of the
// files it mounts, and returns what is wrong. A file that does not load is one problem.
func composeProblems(dir string) []string {
	p, err := loadCompose(dir, "*")
	if err != nil {
		return []string{"load: " + err.Error()}
	}
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }

	// Tally commands, parsed as tally parses them.
	cmds := map[string]composeCommand{}
	for _, name := range p.ServiceNames() {
		svc := p.Services[name]
		if !isTally(svc) {
			continue
		}
		c, err := tallyCommand(svc)
		if err != nil {
			bad("service %s: %v", name, err)
			c.name = "" // a tally service, but nothing more is known
		}
		cmds[name] = c
	}
	for _, name := range slices.Sorted(maps.Keys(cmds)) {
		c, svc := cmds[name], p.Services[name]
		if c.serve == nil && c.relay == nil {
			continue
		}
		// Every Redis named in a flag is a redis-server service on that port, enabled in
		// every profile the tally service is, and started before it.
		for flag, addrs := range c.redisAddrs() {
			for _, a := range addrs {
				host, port, err := splitHostPort(a)
				if err != nil {
					bad("service %s: %s %s: %v", name, flag, a, err)
					continue
				}
				target, err := p.GetService(host)
				if err != nil {
					bad("service %s: %s %s: no service %q", name, flag, a, host)
					continue
				}
				if rp := redisPort(target); rp != port {
					bad("service %s: %s %s: service %s listens on Redis port %d, not %d", name, flag, a, host, rp, port)
				}
				if len(target.Profiles) > 0 && !slices.Equal(target.Profiles, svc.Profiles) {
					bad("service %s: %s %s: service %s only runs with profiles %v", name, flag, a, host, target.Profiles)
				}
				if !dependsOn(p, name, host) {
					bad("service %s: %s %s: does not depend on service %s (compose would not start it first)", name, flag, a, host)
				}
			}
		}
		// The data Redis persists every write: AOF on, with an explicit fsync policy.
		if c.serve != nil && c.serve.redis.addr != "" {
			host, _, _ := splitHostPort(c.serve.redis.addr)
			if target, err := p.GetService(host); err == nil &&
				(redisArg(target, "appendonly") != "yes" || redisArg(target, "appendfsync") == "") {
				bad("service %s: data Redis %s runs without --appendonly yes and an explicit --appendfsync", name, host)
			}
		}
		// Listeners must be reachable from other containers and from published ports.
		if m := c.metricsAddr(); m != "" {
			if host, _, err := splitHostPort(m); err == nil && host != "" && host != "0.0.0.0" && host != "::" {
				bad("service %s: listens on %s, unreachable from other containers", name, m)
			}
		}
		_, listenPort, _ := splitHostPort(c.metricsAddr())
		for _, port := range svc.Ports {
			if int(port.Target) != listenPort {
				bad("service %s: publishes container port %d; tally listens on %d", name, port.Target, listenPort)
			}
		}
		// The keys file is mounted from a valid file in the repository.
		if c.serve != nil && c.serve.keysFile != "" {
			hp := hostPath(svc, c.serve.keysFile)
			if hp == "" {
				bad("service %s: --api-keys-file %s is not mounted", name, c.serve.keysFile)
			} else if _, err := readKeys(hp); err != nil {
				bad("service %s: %v", name, err)
			}
		}
	}

	for _, name := range p.ServiceNames() {
		svc := p.Services[name]
		for _, v := range svc.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				bad("service %s: bind mount source %s: %v", name, v.Source, err)
			}
		}
		// Shell scripts (the cluster's creation job) at least parse, after interpolation.
		if len(svc.Entrypoint) == 2 && svc.Entrypoint[0] == "sh" && strings.HasPrefix(svc.Entrypoint[1], "-") && strings.Contains(svc.Entrypoint[1], "c") {
			for _, script := range svc.Command {
				if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
					bad("service %s: sh -n: %v: %s", name, err, out)
				}
			}
		}
		if svc.Build != nil {
			if _, err := os.Stat(filepath.Join(svc.Build.Context, "Dockerfile")); err != nil {
				bad("service %s: build: %v", name, err)
			}
		}
	}
	out = append(out, prometheusProblems(p, cmds)...)
	out = append(out, grafanaProblems(p)...)
	return out
}

// serviceByImage returns the service whose image starts with prefix.
func serviceByImage(p *types.Project, prefix string) (types.ServiceConfig, bool) {
	for _, name := range p.ServiceNames() {
		if strings.HasPrefix(p.Services[name].Image, prefix) {
			return p.Services[name], true
		}
	}
	return types.ServiceConfig{}, false
}

// prometheusConfig is the part of prometheus.yml the checks read.
type prometheusConfig struct {
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		Scheme        string `yaml:"scheme"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// readPrometheus reads the Prometheus configuration the prometheus service mounts.
func readPrometheus(p *types.Project) (prometheusConfig, error) {
	var cfg prometheusConfig
	svc, ok := serviceByImage(p, "prom/prometheus")
	if !ok {
		return cfg, errors.New("no prom/prometheus service")
	}
	path := hostPath(svc, "/etc/prometheus/prometheus.yml")
	if path == "" {
		return cfg, errors.New("prometheus: /etc/prometheus/prometheus.yml is not mounted")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// prometheusProblems: every scrape target is a tally service and the port it serves
// /metrics on (serve's --addr, relay's --metrics-addr), and every tally service is scraped.
func prometheusProblems(p *types.Project, cmds map[string]composeCommand) []string {
	cfg, err := readPrometheus(p)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	scraped := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		if (sc.MetricsPath != "" && sc.MetricsPath != "/metrics") || (sc.Scheme != "" && sc.Scheme != "http") {
			out = append(out, fmt.Sprintf("prometheus job %s: tally serves http /metrics, not %s %s", sc.JobName, sc.Scheme, sc.MetricsPath))
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, err := splitHostPort(target)
				if err != nil {
					out = append(out, fmt.Sprintf("prometheus job %s: target %s: %v", sc.JobName, target, err))
					continue
				}
				c, ok := cmds[host]
				if !ok {
					out = append(out, fmt.Sprintf("prometheus job %s: target %s: no tally service %q", sc.JobName, target, host))
					continue
				}
				if c.serve == nil && c.relay == nil {
					scraped[host] = true // its command is wrong, reported already
					continue
				}
				if _, mp, err := splitHostPort(c.metricsAddr()); err != nil || mp != port {
					out = append(out, fmt.Sprintf("prometheus job %s: target %s: service %s serves /metrics on %q", sc.JobName, target, host, c.metricsAddr()))
					continue
				}
				scraped[host] = true
			}
		}
	}
	for name := range cmds {
		if !scraped[name] {
			out = append(out, fmt.Sprintf("prometheus: tally service %s is not scraped", name))
		}
	}
	return out
}

// grafanaProblems: the provisioned data source is the prometheus service, the dashboard
// provider reads a mounted directory of valid dashboards that use that data source, and the
// home dashboard exists.
func grafanaProblems(p *types.Project) []string {
	svc, ok := serviceByImage(p, "grafana/grafana")
	if !ok {
		return []string{"no grafana/grafana service"}
	}
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	prov := hostPath(svc, "/etc/grafana/provisioning")
	if prov == "" {
		return []string{"grafana: /etc/grafana/provisioning is not mounted"}
	}
	readYAML := func(sub string, v any) {
		files, _ := filepath.Glob(filepath.Join(prov, sub, "*.yml"))
		if len(files) == 0 {
			bad("grafana: no provisioning files in %s", filepath.Join(prov, sub))
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err == nil {
				err = yaml.Unmarshal(data, v)
			}
			if err != nil {
				bad("grafana: %s: %v", f, err)
			}
		}
	}
	var ds struct {
		Datasources []struct{ Name, UID, Type, URL string } `yaml:"datasources"`
	}
	readYAML("datasources", &ds)
	uids := map[string]bool{}
	for _, d := range ds.Datasources {
		uids[d.UID] = true
		if d.Type != "prometheus" {
			continue
		}
		host, port, err := splitHostPort(strings.TrimPrefix(d.URL, "http://"))
		prom, ok := serviceByImage(p, "prom/prometheus")
		if err != nil || !ok || host != prom.Name || port != 9090 {
			bad("grafana: data source %s: url %s is not the prometheus service on 9090", d.Name, d.URL)
		}
	}
	var dash struct {
		Providers []struct {
			Name    string
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML("dashboards", &dash)
	for _, pr := range dash.Providers {
		dir := hostPath(svc, pr.Options.Path)
		if dir == "" {
			bad("grafana: dashboard provider %s: %s is not mounted", pr.Name, pr.Options.Path)
			continue
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, f := range files {
			for _, uid := range dashboardDatasources(f, &out) {
				if !uids[uid] {
					bad("grafana: %s uses data source uid %q; provisioned: %v", f, uid, slices.Sorted(maps.Keys(uids)))
				}
			}
		}
	}
	if home := svc.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != nil {
		hp := hostPath(svc, *home)
		if _, err := os.Stat(hp); hp == "" || err != nil {
			bad("grafana: home dashboard %s: not mounted from an existing file (%v)", *home, err)
		}
	}
	return out
}

// dashboardDatasources returns the uids of the data sources a dashboard JSON file refers
// to ("datasource": {"uid": ...}), except template variables (${...}) and Grafana's own.
func dashboardDatasources(path string, problems *[]string) []string {
	data, err := os.ReadFile(path)
	var doc any
	if err == nil {
		err = json.Unmarshal(data, &doc)
	}
	if err != nil {
		*problems = append(*problems, fmt.Sprintf("grafana: dashboard %s: %v", path, err))
		return nil
	}
	var uids []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ds, ok := v["datasource"].(map[string]any); ok {
				if uid, ok := ds["uid"].(string); ok && !strings.HasPrefix(uid, "$") && !strings.HasPrefix(uid, "-- ") && uid != "grafana" {
					uids = append(uids, uid)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return uids
}

// TestComposeFile loads docker-compose.yml with every profile and checks its wiring; the
// demo key is the documented demo token.
func TestComposeFile(t *testing.T) {
	require.Empty(t, composeProblems(repoRoot))

	p, err := loadCompose(repoRoot, "*")
	require.NoError(t, err)
	for _, s := range []string{"redis", "lock-1", "lock-2", "lock-3", "serve-1", "serve-2", "relay", "prometheus", "grafana",
		"redis-cluster-1", "redis-cluster-2", "redis-cluster-3", "redis-cluster-init", "serve-cluster"} {
		_, err := p.GetService(s)
		require.NoError(t, err, "service %s", s)
	}
	keys, err := readKeys(filepath.Join(repoRoot, "deploy/api-keys.demo.json"))
	require.NoError(t, err)
	require.Len(t, keys, 1)
	sum := sha256.Sum256([]byte(demoToken))
	require.Equal(t, hex.EncodeToString(sum[:]), keys[0].SHA256, "the demo key is the sha256 of demoToken")
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs/deploy.md"))
	require.NoError(t, err)
	require.Contains(t, string(doc), demoToken, "docs/deploy.md gives the demo token")
}

// copyDeployFiles copies the compose file and everything it mounts or builds from into a
// temporary directory, to be broken there.
func copyDeployFiles(t *testing.T) string {
	dst := t.TempDir()
	for _, f := range []string{"docker-compose.yml", "Dockerfile"} {
		data, err := os.ReadFile(filepath.Join(repoRoot, f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, f), data, 0o644))
	}
	src := filepath.Join(repoRoot, "deploy")
	require.NoError(t, filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, "deploy", rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, "deploy", rel), data, 0o644)
	}))
	return dst
}

// TestComposeChecksCatchMistakes breaks a copy of the deployment files in one way each and
// requires composeProblems to name the mistake: every check can fail.
func TestComposeChecksCatchMistakes(t *testing.T) {
	// replace replaces the first n occurrences of old in file (n < 0: all of them).
	replace := func(file, old, new string, n int) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			path := filepath.Join(dir, file)
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Contains(t, string(data), old, "the mutation must apply")
			require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(data), old, new, n)), 0o644))
		}
	}
	edit := func(file, old, new string) func(t *testing.T, dir string) { return replace(file, old, new, 1) }
	editAll := func(file, old, new string) func(t *testing.T, dir string) { return replace(file, old, new, -1) }
	write := func(file, content string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644))
		}
	}
	remove := func(file string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, file))) }
	}
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, dir string)
		want   string
	}{
		{"yaml syntax", edit("docker-compose.yml", "services:\n", "services:\n  broken: [\n"), "load: "},
		{"schema: unknown key", edit("docker-compose.yml", `    ports: ["127.0.0.1:8082:8080"]`, `    portz: ["127.0.0.1:8082:8080"]`), "load: "},
		{"schema: depends_on a missing service", edit("docker-compose.yml", "      prometheus:\n        condition", "      prometheuz:\n        condition"), "load: "},
		{"serve flag typo", edit("docker-compose.yml", "- --relay=false", "- --relay=flase"), "service serve-1: tally serve"},
		{"relay unknown flag", edit("docker-compose.yml", "--sink-stream=", "--sink-streem="), "service relay: tally relay"},
		{"serve refuses a public address without keys", edit("docker-compose.yml", "      - --api-keys-file=/etc/tally/api-keys.json\n", ""), "without API keys"},
		{"redis host is no service", editAll("docker-compose.yml", "--redis=redis:6379", "--redis=redis-data:6379"), `no service "redis-data"`},
		{"lock master port", editAll("docker-compose.yml", "lock-3:6379\n", "lock-3:6380\n"), "listens on Redis port 6379, not 6380"},
		{"default service uses a profile's Redis", edit("docker-compose.yml", "--redis=redis:6379\n      - --concurrency", "--redis-cluster=redis-cluster-1:6379\n      - --concurrency"), "only runs with profiles [cluster]"},
		{"missing depends_on", edit("docker-compose.yml", "    lock-3:\n      condition: service_healthy\n", ""), "does not depend on service lock-3"},
		{"data Redis without AOF", edit("docker-compose.yml", `"--appendonly", "yes", "--appendfsync", "always", "--save", ""]`+"\n    restart: unless-stopped\n    ports", `"--save", ""]`+"\n    restart: unless-stopped\n    ports"), "without --appendonly yes"},
		{"serve listens on loopback", edit("docker-compose.yml", "--addr=0.0.0.0:8080", "--addr=127.0.0.1:8080"), "unreachable from other containers"},
		{"published port", edit("docker-compose.yml", "127.0.0.1:8082:8080", "127.0.0.1:8082:8081"), "publishes container port 8081"},
		{"keys file missing", remove("deploy/api-keys.demo.json"), "bind mount source"},
		{"keys file invalid", write("deploy/api-keys.demo.json", "[]"), "--api-keys-file"},
		{"keys file not mounted", editAll("docker-compose.yml", ":/etc/tally/api-keys.json:ro", ":/etc/tally/keys.json:ro"), "is not mounted"},
		{"no Dockerfile", remove("Dockerfile"), "build: "},
		{"cluster job script", edit("docker-compose.yml", "          sleep 1\n        done", "          sleep 1\n        dne"), "service redis-cluster-init: sh -n"},
		{"prometheus target port", edit("deploy/prometheus.yml", "relay:9100", "relay:9101"), `target relay:9101: service relay serves /metrics on "0.0.0.0:9100"`},
		{"prometheus target host", edit("deploy/prometheus.yml", "serve-2:8080", "serve-3:8080"), `no tally service "serve-3"`},
		{"prometheus misses a service", edit("deploy/prometheus.yml", `, "serve-2:8080"`, ""), "tally service serve-2 is not scraped"},
		{"prometheus path", edit("deploy/prometheus.yml", "  - job_name: tally-relay\n", "  - job_name: tally-relay\n    metrics_path: /metricz\n"), "not  /metricz"},
		{"prometheus config not mounted", edit("docker-compose.yml", ":/etc/prometheus/prometheus.yml:ro", ":/etc/prometheus/other.yml:ro"), "is not mounted"},
		{"grafana data source url", edit("deploy/grafana/provisioning/datasources/prometheus.yml", "prometheus:9090", "prometheus:9091"), "is not the prometheus service"},
		{"grafana dashboards path", edit("deploy/grafana/provisioning/dashboards/tally.yml", "path: /var/lib/grafana/dashboards", "path: /var/lib/grafana/dashboardz"), "dashboard provider tally: /var/lib/grafana/dashboardz is not mounted"},
		{"grafana dashboard data source", write("deploy/grafana/dashboards/other.json", `{"panels":[{"datasource":{"type":"prometheus","uid":"prom-x"}}]}`), `uses data source uid "prom-x"`},
		{"grafana dashboard not JSON", write("deploy/grafana/dashboards/other.json", `{"panels":`), "other.json: unexpected end of JSON input"},
		{"grafana home dashboard", edit("docker-compose.yml", "dashboards/tally.json", "dashboards/none.json"), "home dashboard"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDeployFiles(t)
			require.Empty(t, composeProblems(dir), "the copy is fine before it is broken")
			tc.break_(t, dir)
			problems := composeProblems(dir)
			t.Logf("problems:\n%s", strings.Join(problems, "\n"))
			require.Contains(t, strings.Join(problems, "\n"), tc.want)
		})
	}
}
