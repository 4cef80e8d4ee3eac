package bench

import (
	"context"
	"time"
)

// rssEvery is how often a run under --target samples its replicas' resident set.
const rssEvery = 250 * time.Millisecond

// rssWatch samples the --target replicas' resident set while a run's load goes on and
// keeps the largest: the budget holds "throughout", not at the end.
type rssWatch struct {
	d      *httpDriver
	cancel context.CancelFunc
	done   chan struct{}
	peak   float64 // bytes; the watching goroutine's until done is closed
	seen   bool
}

// watchRSS samples d's replicas now and every interval until stop.
func watchRSS(ctx context.Context, d *httpDriver, interval time.Duration) *rssWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &rssWatch{d: d, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			w.sample(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *rssWatch) sample(ctx context.Context) {
	if v, ok := w.d.serverRSS(ctx); ok {
		w.peak, w.seen = max(w.peak, v), true
	}
}

// stop ends the sampling, samples once more and returns the largest resident set of any
// replica seen, in MiB; nil when no sample could be read (a server without the process
// metrics).
func (w *rssWatch) stop(ctx context.Context) *float64 {
	w.cancel()
	<-w.done
	w.sample(ctx)
	if !w.seen {
		return nil
	}
	mib := w.peak / (1 << 20)
	return &mib
}
