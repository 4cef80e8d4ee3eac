package lock

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// DoAll runs fn while holding the leases of every key in keys, and returns fn's error. It
// is Do for a write that touches several keys at once (a transfer, a group commit of several
// accounts); its results are those of Do, and fn's context is cancelled when any of the
// leases is lost.
//
// The leases are first tried all at once, without waiting (one pipelined round of
// attempts). If any key is busy, the leases taken are given back and DoAll waits for the
// keys one after another in sorted order, like nested Do calls. Only that ordered wait ever
// blocks, so two DoAll calls that share keys cannot wait for each other in a cycle.
func (l *Locker) DoAll(ctx context.Context, keys []string, fn func(ctx context.Context) error) error {
	if fn == nil {
		return errors.New("lock: nil fn")
	}
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	if len(keys) == 1 {
		return l.Do(ctx, keys[0], fn)
	}
	leases, err := l.tryAll(ctx, keys)
	if err != nil && !errors.Is(err, ErrNotAcquired) {
		return err
	}
	if err != nil {
		if leases, err = l.waitAll(ctx, keys); err != nil {
			return err
		}
	}
	defer func() {
		for _, k := range keys {
			l.queue.leave(k)
		}
	}()
	return l.runAll(ctx, leases, fn)
}

// tryAll tries every key at once without waiting. It returns the leases (holding each
// key's local queue slot) when all were taken; otherwise it gives back those taken and
// returns the first error (ErrNotAcquired, or ctx's).
func (l *Locker) tryAll(ctx context.Context, keys []string) ([]*Lease, error) {
	leases := make([]*Lease, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leases[i], errs[i] = l.obtainHooked(ctx, k, true, true, false)
		}()
	}
	wg.Wait()
	var first error
	for _, err := range errs {
		if err != nil && (first == nil || !errors.Is(err, ErrNotAcquired)) {
			first = err // a context error wins over "busy"
		}
	}
	if first == nil {
		return leases, nil
	}
	l.giveBack(ctx, keys, leases)
	return nil, first
}

// waitAll takes the keys one after another, in order, waiting for each like Do. On
// failure it gives back what it took.
func (l *Locker) waitAll(ctx context.Context, keys []string) ([]*Lease, error) {
	leases := make([]*Lease, len(keys))
	for i, k := range keys {
		lease, err := l.obtain(ctx, k, false, true)
		if err != nil {
			l.giveBack(ctx, keys[:i], leases[:i])
			return nil, err
		}
		leases[i] = lease
	}
	return leases, nil
}

// giveBack releases the leases taken (nil entries were not) and leaves their queue slots.
func (l *Locker) giveBack(ctx context.Context, keys []string, leases []*Lease) {
	for i, lease := range leases {
		if lease != nil {
			l.releaseQuietly(ctx, lease)
			l.queue.leave(keys[i])
		}
	}
}
