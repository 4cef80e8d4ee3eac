// Package faultproxy is a TCP proxy for tests that injects network faults between a client
// and a server: Cut closes every connection and refuses new ones until Heal; Slow delays
// every chunk of bytes in both directions; LoseNextReply drops the next answer the server
// sends, so that a request runs but its client never learns it did. Tests put it in front
// of a redis-server so that the processes under test lose or crawl through their
// connection while the test's own checks talk to the server directly.
package faultproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections accepted on its loopback address to a target address.
type Proxy struct {
	target string
	ln     net.Listener

	mu    sync.Mutex
	conns map[net.Conn]struct{} // both ends of every live pair
	cut   bool
	delay time.Duration
	lose  bool // the next chunk from the server is dropped (LoseNextReply)

	cuts, refused, lost atomic.Int64
	wg                  sync.WaitGroup
}

// New listens on a free loopback port and forwards every connection to target. Close
// stops it.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's host:port, the address to give the client instead of target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every open connection and refuses new ones (accepts and closes them at once,
// so clients see a reset rather than a hang) until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.cuts.Add(1)
}

// Slow delays every chunk read from either side by d before it is forwarded, until Heal or
// another Slow. Order within a connection is kept.
func (p *Proxy) Slow(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// LoseNextReply drops the next chunk of bytes any server connection sends back, and closes
// that connection: the request it answered ran on the server, but its client sees the
// connection fail instead of the reply. Only that one chunk is lost; Heal also disarms it.
func (p *Proxy) LoseNextReply() {
	p.mu.Lock()
	p.lose = true
	p.mu.Unlock()
}

// Heal ends a Cut and a Slow and disarms LoseNextReply: new connections are forwarded
// again without delay.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut, p.delay, p.lose = false, 0, false
	p.mu.Unlock()
}

// Lost returns how many replies LoseNextReply dropped.
func (p *Proxy) Lost() int64 { return p.lost.Load() }

// Cuts returns how many times Cut was called.
func (p *Proxy) Cuts() int64 { return p.cuts.Load() }

// Refused returns how many connections were refused because the proxy was cut.
func (p *Proxy) Refused() int64 { return p.refused.Load() }

// Close stops listening, closes every connection and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			p.refused.Add(1)
			in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		if p.cut { // cut while dialing
			p.mu.Unlock()
			p.refused.Add(1)
			in.Close()
			out.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(out, in, false)
		go p.pipe(in, out, true)
	}
}

// pipe copies src to dst chunk by chunk, each after the current delay; fromServer marks the
// direction LoseNextReply drops a chunk of. When either side ends, both are closed: a
// half-open Redis connection is of no use to anybody.
func (p *Proxy) pipe(dst, src net.Conn, fromServer bool) {
	defer p.wg.Done()
	defer p.drop(dst, src)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			d := p.delay
			lose := fromServer && p.lose
			if lose {
				p.lose = false
			}
			p.mu.Unlock()
			if lose {
				p.lost.Add(1)
				return // the reply is gone, and the connection with it
			}
			if d > 0 {
				time.Sleep(d) // the injected latency itself
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, reset, or closed by Cut/Close
		}
	}
}

func (p *Proxy) drop(a, b net.Conn) {
	a.Close()
	b.Close()
	p.mu.Lock()
	delete(p.conns, a)
	delete(p.conns, b)
	p.mu.Unlock()
}
