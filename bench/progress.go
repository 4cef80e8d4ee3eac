package bench

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// progress writes a one-line status to a terminal, rewritten in place. With a nil writer
// it does nothing.
type progress struct {
	w   io.Writer
	now func() time.Time
}

func newProgress(w io.Writer, now func() time.Time) *progress { return &progress{w: w, now: now} }

// progressInterval is how often the live line is rewritten.
const progressInterval = 250 * time.Millisecond

// status replaces the line with a message.
func (p *progress) status(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, "\r\033[K"+format, args...)
	}
}

// clear erases the line.
func (p *progress) clear() {
	if p.w != nil {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// live rewrites the line with the run's elapsed time, operations, throughput and errors
// until the returned function is called (which waits for the writer to stop).
func (p *progress) live(label string, start time.Time, d time.Duration, done, failed *atomic.Int64) (stop func()) {
	if p.w == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			el := p.now().Sub(start)
			n := done.Load()
			p.status("%s: %.1fs/%v  %d ops  %.0f ops/s  %d errors", label, el.Seconds(), d, n, float64(n)/max(el.Seconds(), 1e-9), failed.Load())
		}
	})
	return func() {
		close(quit)
		wg.Wait()
		p.clear()
	}
}
