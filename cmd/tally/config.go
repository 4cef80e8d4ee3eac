package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/internal/redisx"
)

// newFlagSet returns a flag set whose unset flags are read from TALLY_* environment
// variables after parsing. Its -h output starts with commandUsage(name).
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\nflags:\n", commandUsage(name))
		fs.PrintDefaults()
	}
	return fs
}

// envVar is the environment variable of a flag: --lock-redis-password is
// TALLY_LOCK_REDIS_PASSWORD.
func envVar(flagName string) string {
	return "TALLY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse parses args, then fills every flag not given on the command line from its
// TALLY_<NAME> environment variable (envVar).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		set[f.Name] = true
		if s, ok := f.Value.(*secretValue); ok {
			s.inArgv = true
		}
	})
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := envVar(f.Name)
		if v := os.Getenv(env); v != "" {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("%s: %w", env, serr)
			}
		}
	})
	return err
}

// redisFlags are the flags that choose the data Redis and how to connect to it.
type redisFlags struct {
	addr    string
	cluster string
	conn    connFlags
}

// connFlags are the credentials and TLS flags of one kind of Redis connection: --redis-*
// for the data Redis, --lock-redis-* for the lock masters. They are independent: the lock
// masters inherit nothing from the data Redis's.
type connFlags struct {
	name string // "redis" or "lock-redis"
	o    redisx.ConnOptions
	pw   secretValue
}

// secretValue is a flag holding a secret. parse marks it when it was given on the command
// line, where every local user can read it (ps, /proc), rather than in the environment.
type secretValue struct {
	s      *string
	inArgv bool
}

func (v *secretValue) String() string {
	if v.s == nil || *v.s == "" {
		return ""
	}
	return "(hidden)"
}

func (v *secretValue) Set(s string) error { *v.s = s; return nil }

// register adds --<name>-user, --<name>-password (also TALLY_<NAME>_PASSWORD),
// --<name>-tls, --<name>-tls-ca, --<name>-tls-cert, --<name>-tls-key and
// --<name>-tls-server-name; what names the servers in their help.
func (c *connFlags) register(fs *flag.FlagSet, name, what string) {
	c.name = name
	env := envVar(name + "-password")
	fs.StringVar(&c.o.Username, name+"-user", "", "ACL user of "+what+" (default: the default user)")
	c.pw.s = &c.o.Password
	fs.Var(&c.pw, name+"-password", "`password` of "+what+"; give it as "+env+" instead: a command line is visible to every local user")
	fs.BoolVar(&c.o.TLS, name+"-tls", false, "connect to "+what+" over TLS")
	fs.StringVar(&c.o.CAFile, name+"-tls-ca", "", "with --"+name+"-tls: PEM file of the CAs that sign the server certificates of "+what+" (default: the system's)")
	fs.StringVar(&c.o.CertFile, name+"-tls-cert", "", "with --"+name+"-tls: PEM client certificate for "+what+" (with --"+name+"-tls-key)")
	fs.StringVar(&c.o.KeyFile, name+"-tls-key", "", "with --"+name+"-tls: PEM key of --"+name+"-tls-cert")
	fs.StringVar(&c.o.ServerName, name+"-tls-server-name", "", "with --"+name+"-tls: name the server certificates of "+what+" must carry (default: the host dialled)")
}

// tlsConfig returns the TLS configuration of the flags (nil without --<name>-tls), or an
// error naming the flags.
func (c *connFlags) tlsConfig() (*tls.Config, error) {
	cfg, err := c.o.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("--%s-tls*: %w", c.name, err)
	}
	return cfg, nil
}

// warnArgv logs that a password on the command line can be read by every local user.
func (c *connFlags) warnArgv(log *slog.Logger) {
	if c.pw.inArgv {
		log.Warn("--" + c.name + "-password on the command line is visible to every local user (ps); set " +
			envVar(c.name+"-password") + " instead")
	}
}

// connectError explains a failed first connection whose cause is the configuration.
func (c *connFlags) connectError(what string, err error) error {
	switch {
	case redis.IsAuthError(err) || redis.IsPermissionError(err):
		return fmt.Errorf("connect to %s: authentication refused (check --%s-user and %s): %w",
			what, c.name, envVar(c.name+"-password"), err)
	case redisx.ConfigError(err):
		return fmt.Errorf("connect to %s: TLS handshake failed (check --%s-tls, --%s-tls-ca, --%s-tls-server-name and the client certificate): %w",
			what, c.name, c.name, c.name, err)
	}
	return fmt.Errorf("connect to %s: %w", what, err)
}

// errRedisRequired is returned by commands that need a real Redis when neither --redis nor
// --redis-cluster is given.
var errRedisRequired = errors.New("--redis or --redis-cluster is required")

// register adds --redis and --redis-cluster for a command that needs a real Redis (relay,
// bench, verify): one of them is required.
func (r *redisFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.addr, "redis", "", "standalone Redis address host:port (this or --redis-cluster is required)")
	fs.StringVar(&r.cluster, "redis-cluster", "", "comma-separated Redis Cluster seed nodes host:port,... (this or --redis is required)")
	r.conn.register(fs, "redis", "the data Redis")
}

// registerEmbedded adds --redis and --redis-cluster for serve, which without either runs
// on an embedded in-memory Redis.
func (r *redisFlags) registerEmbedded(fs *flag.FlagSet) {
	fs.StringVar(&r.addr, "redis", "", "standalone Redis address host:port (default: embedded in-memory Redis, NOT durable)")
	fs.StringVar(&r.cluster, "redis-cluster", "", "comma-separated Redis Cluster seed nodes host:port,... (default: embedded in-memory Redis, NOT durable)")
	r.conn.register(fs, "redis", "the data Redis")
}

// check returns an error when both flags are given, or neither and embedded is not allowed.
func (r *redisFlags) check(allowEmbedded bool) error {
	switch {
	case r.addr != "" && r.cluster != "":
		return errors.New("give either --redis or --redis-cluster, not both")
	case r.addr == "" && r.cluster == "" && !allowEmbedded:
		return errRedisRequired
	case r.addr == "" && r.cluster == "" && r.conn.o.Set():
		return errors.New("--redis-user, --redis-password and --redis-tls* need --redis or --redis-cluster (the embedded Redis takes neither)")
	}
	return nil
}

// dataRedis is a client for the data Redis that has reached no server yet: components can
// be built on client before start connects (or starts the embedded Redis), so that every
// configuration is checked before anything starts.
type dataRedis struct {
	client redis.UniversalClient
	conn   *connFlags

	embedded *miniredis.Miniredis // nil unless neither --redis nor --redis-cluster was given
	expiring func()               // stops embedded's key expiry (redisx.ExpireKeys) once started
	mu       sync.Mutex
	addr     string // embedded's address once started
}

// open returns the configured client without connecting; with neither flag set and
// embedded allowed, a client of an embedded Redis that start will start. It returns the
// errors of check.
func (r *redisFlags) open(allowEmbedded bool) (*dataRedis, error) {
	if err := r.check(allowEmbedded); err != nil {
		return nil, err
	}
	tlsCfg, err := r.conn.tlsConfig()
	if err != nil {
		return nil, err
	}
	d := &dataRedis{conn: &r.conn}
	switch {
	case r.cluster != "":
		o := &redis.ClusterOptions{Addrs: splitList(r.cluster), ContextTimeoutEnabled: true}
		r.conn.o.ApplyCluster(o, tlsCfg)
		d.client = redis.NewClusterClient(o)
	case r.addr != "":
		o := &redis.Options{Addr: r.addr, ContextTimeoutEnabled: true}
		r.conn.o.Apply(o, tlsCfg)
		d.client = redis.NewClient(o)
	default:
		d.embedded = miniredis.NewMiniRedis()
		d.client = redis.NewClient(&redis.Options{Addr: "embedded", ContextTimeoutEnabled: true, Dialer: d.dialEmbedded})
	}
	return d, nil
}

// dialEmbedded connects to the embedded Redis, once start has started it.
func (d *dataRedis) dialEmbedded(ctx context.Context, _, _ string) (net.Conn, error) {
	d.mu.Lock()
	addr := d.addr
	d.mu.Unlock()
	if addr == "" {
		return nil, errors.New("the embedded Redis is not started")
	}
	var dialer net.Dialer
	return dialer.DialContext(ctx, "tcp", addr)
}

// start checks that the Redis answers, or starts the embedded Redis and logs loudly that
// nothing is durable.
func (d *dataRedis) start(ctx context.Context, log *slog.Logger) error {
	if d.embedded == nil {
		d.conn.warnArgv(log)
		return ping(ctx, d.client, d.conn)
	}
	if err := d.embedded.StartAddr("127.0.0.1:0"); err != nil {
		return fmt.Errorf("start embedded redis: %w", err)
	}
	// miniredis expires nothing by itself; the embedded Redis keeps the same housekeeping
	// as a real one (idempotency records, operation tokens, leases expire).
	d.expiring = redisx.ExpireKeys(d.embedded)
	d.mu.Lock()
	d.addr = d.embedded.Addr()
	d.mu.Unlock()
	log.Warn("NOT DURABLE: no --redis or --redis-cluster given; using an embedded in-memory Redis. Every account, event and outbox entry is lost when this process exits.",
		"embedded_redis", d.embedded.Addr())
	return nil
}

// close closes the client and stops the embedded Redis if start started it.
func (d *dataRedis) close() {
	d.client.Close()
	if d.expiring != nil {
		d.expiring()
	}
	if d.embedded != nil {
		d.embedded.Close()
	}
}

// connect returns a client for the configured Redis that has answered a PING. With neither
// flag set and embedded allowed, it starts an in-process miniredis and logs loudly that
// nothing is durable; otherwise neither flag is errRedisRequired. The returned close
// function stops what connect started.
func (r *redisFlags) connect(ctx context.Context, log *slog.Logger, allowEmbedded bool) (redis.UniversalClient, func(), error) {
	d, err := r.open(allowEmbedded)
	if err != nil {
		return nil, nil, err
	}
	if err := d.start(ctx, log); err != nil {
		d.close()
		return nil, nil, err
	}
	return d.client, d.close, nil
}

// ping checks that the Redis of c answers, explaining a refusal by its configuration.
func ping(ctx context.Context, c redis.UniversalClient, conn *connFlags) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return conn.connectError("redis", err)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// isLoopback reports whether a listen address binds only to loopback.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// logFlags are serve's and relay's --log-level and --log-format.
type logFlags struct {
	level, format string
}

func (f *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.level, "log-level", "info", "debug | info | warn | error")
	fs.StringVar(&f.format, "log-format", "auto", "log format on stderr: json (one JSON object per line), text (key=value), or auto: text when stderr is a terminal, else json")
}

// logger returns the logger the flags ask for, writing to w.
func (f *logFlags) logger(w io.Writer) (*slog.Logger, error) { return newLogger(w, f.level, f.format) }

// newLogger returns a logger writing to w at level in format: "text", "json", or "auto"
// (text when w is a terminal, for a person running the command; json otherwise, for a
// log collector).
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text, json or auto, got %q", format)
}

// isTerminal reports whether w is a character device (a terminal), not a pipe or a file.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// validate checks serve's flags that no component's Config checks: the choice of Redis, a
// listen address reachable from other hosts without API keys, and the flags whose zero or
// negative value a Config would silently replace with its default (given explicitly, 0 is a
// mistake, not a request for the default). serve calls it before it starts anything.
func (f *serveFlags) validate() error {
	if err := f.redis.check(true); err != nil {
		return err
	}
	if _, err := f.lock.masterOptions(); err != nil {
		return err
	}
	if err := f.relay.checkSinks(); err != nil {
		return err
	}
	if f.snapCache < 0 {
		return errors.New("--snapshot-cache must be 0 (off) or positive")
	}
	for _, p := range []struct {
		flag string
		ok   bool
	}{
		{"--partitions", f.partitions > 0},
		{"--max-batch", f.maxBatch > 0},
		{"--max-queue", f.maxQueue > 0},
		{"--sweep-stuck-after", f.stuckAfter > 0},
		{"--max-body", f.maxBody > 0},
		{"--idempotency-ttl", f.idemTTL > 0},
		{"--request-timeout", f.reqTimeout > 0},
		{"--shutdown-timeout", f.shutdown > 0},
		{"--lock-ttl", f.lock.ttl > 0},
		{"--lock-wait", f.lock.wait > 0},
		{"--relay-lease-ttl", f.relay.leaseTTL > 0},
		{"--relay-max-attempts", f.relay.maxAttempts > 0},
		{"--outbox-retention", f.relay.retention > 0},
	} {
		if !p.ok {
			return fmt.Errorf("%s must be positive", p.flag)
		}
	}
	if err := f.relay.checkLinger(); err != nil {
		return err
	}
	if !isLoopback(f.addr) && f.keysFile == "" {
		return fmt.Errorf("refusing to listen on non-loopback address %s without API keys: give --api-keys-file (docs/security.md)", f.addr)
	}
	if f.insecureAdm && f.keysFile != "" {
		return errors.New("--insecure-admin is for a loopback server without keys; with --api-keys-file give a key the admin scope")
	}
	if f.rateLimit < 0 || f.rateBurst < 0 {
		return errors.New("--rate-limit and --rate-burst must not be negative")
	}
	if f.rateBurst > 0 && f.rateLimit == 0 {
		return errors.New("--rate-burst needs --rate-limit")
	}
	if f.pprof != "" && !isLoopback(f.pprof) {
		return fmt.Errorf("--pprof must be a loopback address (the profiler has no authentication), got %q", f.pprof)
	}
	return nil
}
