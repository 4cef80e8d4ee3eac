package lock

import (
	"context"
	"slices"
	"sync"
)

// localQueue admits one goroutine per key at a time, in arrival order, so that requests of
// one process for one key wait in memory instead of all hammering the masters. A key is
// present in slots while some goroutine holds it; waiters are woken one by one.
//
// It is a ctx-aware FIFO mutex per key: a waiter that gives up removes itself, and a waiter
// that was handed the slot in the same instant it gave up passes the slot on.
type localQueue struct {
	mu    sync.Mutex
	slots map[string]*slot
}

type slot struct {
	waiters []chan struct{} // FIFO; closing a channel hands the slot to its waiter
}

func newLocalQueue() *localQueue {
	return &localQueue{slots: make(map[string]*slot)}
}

// enter blocks until the caller holds key's slot or ctx is done. It returns ctx.Err() (not
// wrapped) when ctx ended first; the caller then does not hold the slot.
func (q *localQueue) enter(ctx context.Context, key string) error {
	q.mu.Lock()
	s, busy := q.slots[key]
	if !busy {
		q.slots[key] = &slot{}
		q.mu.Unlock()
		return nil
	}
	if err := ctx.Err(); err != nil {
		q.mu.Unlock()
		return err
	}
	ready := make(chan struct{})
	s.waiters = append(s.waiters, ready)
	q.mu.Unlock()

	select {
	case <-ready:
		return nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-ready:
		// Handed the slot while giving up: pass it on.
		q.leaveLocked(key)
	default:
		if i := slices.Index(s.waiters, ready); i >= 0 {
			s.waiters = slices.Delete(s.waiters, i, i+1)
		}
	}
	return ctx.Err()
}

// tryEnter takes key's slot if it is free and reports whether it did.
func (q *localQueue) tryEnter(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, busy := q.slots[key]; busy {
		return false
	}
	q.slots[key] = &slot{}
	return true
}

// leave hands key's slot to the longest waiter, or frees it. The caller must hold the slot.
func (q *localQueue) leave(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.leaveLocked(key)
}

func (q *localQueue) leaveLocked(key string) {
	s := q.slots[key]
	if s == nil {
		panic("lock: leave of a key slot that is not held") // internal invariant
	}
	if len(s.waiters) == 0 {
		delete(q.slots, key)
		return
	}
	next := s.waiters[0]
	s.waiters[0] = nil
	s.waiters = s.waiters[1:]
	close(next)
}

// waiting returns the number of goroutines queued behind the holder of key (for tests).
func (q *localQueue) waiting(key string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if s := q.slots[key]; s != nil {
		return len(s.waiters)
	}
	return 0
}
