// Package redistest starts real redis-server processes on free loopback ports for tests:
// a standalone server, several independent masters (for Redlock) and a 3-master Redis
// Cluster. Every process is stopped by its PID when the test ends.
package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long a server may take to answer PING after it was started.
const startTimeout = 15 * time.Second

// Server is one redis-server child process.
type Server struct {
	tb   testing.TB
	port int
	dir  string
	cfg  config

	mu  sync.Mutex
	cmd *exec.Cmd
}

// config is what the Options set: redis-server arguments, and how the helper's own
// connections (the start-up PING, Client) reach a server that requires them.
type config struct {
	args           []string
	user, password string
	tls            *tls.Config
}

// Option changes how a Server is started.
type Option func(*config)

// WithArgs adds raw redis-server arguments (for example "--cluster-enabled", "yes"). They
// come after the defaults, so they override them (redis-server keeps the last value).
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// WithUser makes the server require authentication: an ACL user with every permission and
// password, the default user disabled (user "default" instead sets requirepass). The
// helper's start-up PING and Client authenticate as that user; other clients get NOAUTH.
func WithUser(user, password string) Option {
	return func(c *config) {
		c.user, c.password = user, password
		if user == "default" {
			c.args = append(c.args, "--requirepass", password)
			return
		}
		c.args = append(c.args, "--user", user, "on", ">"+password, "~*", "&*", "+@all", "--user", "default", "off")
	}
}

// WithTLS makes the server accept TLS connections only, on its port: certFile and keyFile
// are its certificate and key, caFile the CA it verifies client certificates with
// (requireClientCert: clients without one are refused). client is the TLS configuration of
// the helper's own connections and Client.
func WithTLS(certFile, keyFile, caFile string, requireClientCert bool, client *tls.Config) Option {
	return func(c *config) {
		c.tls = client
		auth := "optional"
		if requireClientCert {
			auth = "yes"
		}
		c.args = append(c.args, "--tls-cert-file", certFile, "--tls-key-file", keyFile,
			"--tls-ca-cert-file", caFile, "--tls-auth-clients", auth)
	}
}

// WithAOF turns on the append-only file with the given appendfsync policy ("always",
// "everysec" or "no"). Restart then reloads the data from the AOF in the server's directory.
func WithAOF(fsync string) Option {
	return WithArgs("--appendonly", "yes", "--appendfsync", fsync)
}

// binary returns the path of redis-server, failing the test with install advice when absent.
func binary(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s not found on PATH: install it (apt-get install redis-server redis-tools); the tests need real Redis", name)
	}
	return p
}

// MustStart starts a standalone redis-server without persistence on a free loopback port and
// registers its shutdown with tb.Cleanup. It fails the test if the server does not come up.
func MustStart(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		s := &Server{tb: tb, port: freePort(tb), dir: tb.TempDir(), cfg: cfg}
		if lastErr = s.start(); lastErr == nil {
			tb.Cleanup(s.Stop)
			return s
		}
	}
	tb.Fatalf("redistest: start redis-server: %v", lastErr)
	return nil
}

// MustStartN starts n independent standalone servers (for example Redlock masters).
func MustStartN(tb testing.TB, n int, opts ...Option) []*Server {
	tb.Helper()
	out := make([]*Server, n)
	for i := range out {
		out[i] = MustStart(tb, opts...)
	}
	return out
}

func (s *Server) start() error {
	port := []string{"--port", strconv.Itoa(s.port)}
	if s.cfg.tls != nil {
		port = []string{"--port", "0", "--tls-port", strconv.Itoa(s.port)}
	}
	args := append(port,
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--loglevel", "warning",
		"--protected-mode", "no",
	)
	args = append(args, s.cfg.args...)
	cmd := exec.Command(binary(s.tb, "redis-server"), args...)
	logFile, err := os.Create(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Pdeathsig: a test binary that dies (panic, timeout) takes its servers with it, since
	// its cleanups never run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logFile.Close() }()
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()

	c := redis.NewClient(s.options(&redis.Options{MaxRetries: -1, DialTimeout: time.Second}))
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			go func() { <-exited }() // keep reaping
			return nil
		}
		select {
		case werr := <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server on port %d exited (%v): %s", s.port, werr, strings.TrimSpace(string(log)))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return errors.New("redis-server did not answer PING in time")
		}
	}
}

// Addr returns host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// PID returns the process ID of the running server, or 0 when it is stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// options sets o's address, and the credentials and TLS configuration the server requires.
func (s *Server) options(o *redis.Options) *redis.Options {
	o.Addr, o.Username, o.Password, o.TLSConfig = s.Addr(), s.cfg.user, s.cfg.password, s.cfg.tls
	return o
}

// Client returns a new go-redis client for the server (with the credentials and TLS
// configuration it was started with), closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(s.options(&redis.Options{}))
	s.tb.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Kill stops the server with SIGKILL and waits until its port refuses connections.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Kill()
	s.waitPortClosed()
}

// Stop stops the server with SIGTERM (SIGKILL after a deadline). Safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	s.waitPortClosed()
}

// Pause freezes the server with SIGSTOP; Resume continues it.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

// Restart kills the server with SIGKILL (a no-op when Kill already did) and starts it again
// on the same port, in the same directory, with the same arguments. Without persistence (the
// default) it comes back empty, as a node that lost its memory would; started WithAOF it
// reloads what its append-only file holds, as a crashed process recovers.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	var err error
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.tb.Fatalf("redistest: restart redis-server on %s: %v", s.Addr(), err)
}

func (s *Server) waitPortClosed() {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond)
		if err != nil {
			return
		}
		conn.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Addrs returns the addresses of servers.
func Addrs(servers []*Server) []string {
	out := make([]string, len(servers))
	for i, s := range servers {
		out[i] = s.Addr()
	}
	return out
}

// freePort asks the kernel for a free loopback port. Ports for cluster nodes must also have
// port+10000 free (the cluster bus).
func freePort(tb testing.TB) int {
	tb.Helper()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("redistest: listen: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		if err != nil {
			continue
		}
		bus.Close()
		return port
	}
	tb.Fatalf("redistest: no free port pair found")
	return 0
}
