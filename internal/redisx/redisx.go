// Package redisx holds the few go-redis helpers Tally's packages share: a client that
// connects like another with its own pool, running a function on every master, and the
// credentials and TLS settings of a connection, and the key expiry of the embedded Redis
// (miniredis).
package redisx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/redis/go-redis/v9"
)

// Pooled returns a client that connects like rdb (address or dialer, credentials, TLS, DB)
// with its own pool of size connections, and a function that closes it. A client of
// another type is returned as is, with a no-op close.
func Pooled(rdb redis.UniversalClient, size int) (redis.UniversalClient, func()) {
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		n := redis.NewClient(&redis.Options{
			Network: o.Network, Addr: o.Addr, Dialer: o.Dialer, Username: o.Username, Password: o.Password,
			CredentialsProvider: o.CredentialsProvider, DB: o.DB, TLSConfig: o.TLSConfig,
			ContextTimeoutEnabled: o.ContextTimeoutEnabled, PoolSize: size,
		})
		return n, func() { n.Close() }
	case *redis.ClusterClient:
		o := c.Options()
		n := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.Addrs, Username: o.Username, Password: o.Password, CredentialsProvider: o.CredentialsProvider,
			TLSConfig: o.TLSConfig, ContextTimeoutEnabled: o.ContextTimeoutEnabled, PoolSize: size,
		})
		return n, func() { n.Close() }
	default:
		return rdb, func() {}
	}
}

// PoolSize returns the pool size rdb was configured with (0 for another client type).
func PoolSize(rdb redis.UniversalClient) int {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().PoolSize
	case *redis.ClusterClient:
		return c.Options().PoolSize
	}
	return 0
}

// ForEachMaster runs fn on a standalone client, or on every master of a Cluster
// (concurrently, as go-redis does). Another client type is an error.
func ForEachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	}
	return fmt.Errorf("redisx: unsupported client %T", rdb)
}

// ConnOptions are the credentials and TLS settings of connections to a Redis that
// requires them (an ACL user, TLS with a private CA or client certificates).
type ConnOptions struct {
	// Username and Password authenticate (AUTH); Username "" is the default user.
	Username, Password string
	// TLS turns TLS on; the other fields need it.
	TLS bool
	// CAFile is a PEM file of the CAs that sign the server's certificate (default: the
	// system's roots).
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its key, for servers that
	// require one (tls-auth-clients yes). Both or neither.
	CertFile, KeyFile string
	// ServerName is the name the server's certificate must carry (default: the host of
	// the address dialled).
	ServerName string
}

// TLSConfig returns the TLS configuration of o: nil with TLS off. It returns an error for
// TLS settings without TLS, a certificate without its key (or the reverse), and files that
// cannot be read or hold no valid PEM.
func (o ConnOptions) TLSConfig() (*tls.Config, error) {
	if !o.TLS {
		if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" || o.ServerName != "" {
			return nil, errors.New("TLS settings (CA, certificate, key, server name) need TLS turned on")
		}
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", o.CAFile)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("a TLS client certificate needs both its certificate and its key file")
	}
	if o.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Apply sets o's credentials and TLS configuration on opts.
func (o ConnOptions) Apply(opts *redis.Options, tlsCfg *tls.Config) {
	opts.Username, opts.Password, opts.TLSConfig = o.Username, o.Password, tlsCfg
}

// ApplyCluster sets o's credentials and TLS configuration on a Cluster's opts (every node
// is reached the same way).
func (o ConnOptions) ApplyCluster(opts *redis.ClusterOptions, tlsCfg *tls.Config) {
	opts.Username, opts.Password, opts.TLSConfig = o.Username, o.Password, tlsCfg
}

// Set reports whether any option is set.
func (o ConnOptions) Set() bool { return o != ConnOptions{} }

// ConfigError reports whether err, from a first connection, is a mistake in the
// connection's configuration that retrying will not fix: refused credentials (NOAUTH,
// WRONGPASS, NOPERM) or a failed TLS handshake (unknown CA, wrong name, a server that does
// not speak TLS, a refused client certificate).
func ConfigError(err error) bool {
	if redis.IsAuthError(err) || redis.IsPermissionError(err) {
		return true
	}
	var (
		verify  *tls.CertificateVerificationError
		header  tls.RecordHeaderError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		op      *net.OpError
	)
	// A TLS alert from the server (a refused client certificate) is a net.OpError of
	// "remote error".
	return errors.As(err, &verify) || errors.As(err, &header) || errors.As(err, &unknown) ||
		errors.As(err, &host) || errors.As(err, &op) && op.Op == "remote error"
}
