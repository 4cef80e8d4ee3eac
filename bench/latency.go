package bench

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies is an HDR histogram of durations in microseconds, from 1 µs to 10 minutes with
// 3 significant digits (a quantile is within 0.1% of the true value). One goroutine
// records into it; histograms of several goroutines are merged afterwards, so no sample is
// kept and recording takes no lock.
type Latencies struct {
	h *hdrhistogram.Histogram
}

// latencyMax is the largest duration recorded exactly; longer ones count as latencyMax.
const latencyMax = 10 * time.Minute

// NewLatencies returns an empty histogram.
func NewLatencies() *Latencies {
	return &Latencies{h: hdrhistogram.New(1, int64(latencyMax/time.Microsecond), 3)}
}

// Record adds one duration (clamped to 1 µs..10 min).
func (l *Latencies) Record(d time.Duration) {
	us := min(max(int64(d/time.Microsecond), 1), int64(latencyMax/time.Microsecond))
	_ = l.h.RecordValue(us) // in range by construction
}

// Merge adds every sample of x to l.
func (l *Latencies) Merge(x *Latencies) { l.h.Merge(x.h) }

// Count returns the number of samples.
func (l *Latencies) Count() int64 { return l.h.TotalCount() }

// Quantile returns the q-quantile (0..1), or 0 without samples.
func (l *Latencies) Quantile(q float64) time.Duration {
	if l.h.TotalCount() == 0 {
		return 0
	}
	return time.Duration(l.h.ValueAtQuantile(q*100)) * time.Microsecond
}

// Max returns the largest sample, or 0 without samples.
func (l *Latencies) Max() time.Duration {
	if l.h.TotalCount() == 0 {
		return 0
	}
	return time.Duration(l.h.Max()) * time.Microsecond
}

// ms returns d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
