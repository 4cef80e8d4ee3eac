package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// newFlagSet returns a flag set whose unset flags are read from TALLY_* environment
// variables after parsing.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args, then fills every flag not given on the command line from its
// TALLY_<NAME> environment variable.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "TALLY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := os.Getenv(env); v != "" {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("%s: %w", env, serr)
			}
		}
	})
	return err
}

// redisFlags are the flags that choose the data Redis.
type redisFlags struct {
	addr    string
	cluster string
}

func (r *redisFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.addr, "redis", "", "standalone Redis address host:port (default: embedded in-memory Redis, NOT durable)")
	fs.StringVar(&r.cluster, "redis-cluster", "", "comma-separated Redis Cluster seed nodes host:port,...")
}

// connect returns a client for the configured Redis. With neither flag set and embedded
// allowed, it starts an in-process miniredis and logs loudly that nothing is durable. The
// returned close function stops what connect started.
func (r *redisFlags) connect(ctx context.Context, log *slog.Logger, allowEmbedded bool) (redis.UniversalClient, func(), error) {
	switch {
	case r.addr != "" && r.cluster != "":
		return nil, nil, errors.New("give either --redis or --redis-cluster, not both")
	case r.cluster != "":
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: splitList(r.cluster), ContextTimeoutEnabled: true})
		return c, func() { c.Close() }, ping(ctx, c)
	case r.addr != "":
		c := redis.NewClient(&redis.Options{Addr: r.addr, ContextTimeoutEnabled: true})
		return c, func() { c.Close() }, ping(ctx, c)
	case !allowEmbedded:
		return nil, nil, errors.New("--redis or --redis-cluster is required")
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, nil, fmt.Errorf("start embedded redis: %w", err)
	}
	log.Warn("NOT DURABLE: no --redis or --redis-cluster given; using an embedded in-memory Redis. Every account, event and outbox entry is lost when this process exits.",
		"embedded_redis", m.Addr())
	c := redis.NewClient(&redis.Options{Addr: m.Addr(), ContextTimeoutEnabled: true})
	return c, func() { c.Close(); m.Close() }, nil
}

func ping(ctx context.Context, c redis.UniversalClient) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return fmt.Errorf("connect to redis: %w", err)
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

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
