package bench

import (
	"sync"
	"time"
)

// LeaseWaits collects the lease waits of lock mode (local queue plus acquisition) from many
// goroutines. Plug Acquired into lock.Hooks.Acquired.
type LeaseWaits struct {
	mu sync.Mutex
	h  *Latencies
}

// NewLeaseWaits returns an empty collector.
func NewLeaseWaits() *LeaseWaits { return &LeaseWaits{h: NewLatencies()} }

// Acquired records one wait; its signature is lock.Hooks.Acquired's.
func (w *LeaseWaits) Acquired(_ string, wait time.Duration) {
	w.mu.Lock()
	w.h.Record(wait)
	w.mu.Unlock()
}

// take returns the waits recorded since the last take and starts afresh.
func (w *LeaseWaits) take() *Latencies {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.h
	w.h = NewLatencies()
	return out
}
