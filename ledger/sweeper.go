package ledger

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-ledger/tally/outbox"
)

// SweeperConfig configures a Sweeper. Zero fields take the documented defaults.
type SweeperConfig struct {
	// HoldInterval is how often every partition's expired holds get their HoldExpired
	// event. Default 500ms, so an expiry is recorded within about a second.
	HoldInterval time.Duration
	// TransferInterval is how often pending transfers are looked at. Default 5s.
	TransferInterval time.Duration
	// StuckAfter is how long a cross-partition transfer may stay pending before the sweep
	// reports it (log at warn, Stats.TransfersStuck) and drives it. Default 30s.
	StuckAfter time.Duration
	// Batch bounds the holds or transfers one partition handles per round. Default 100.
	Batch int64
	// Logger receives stuck transfers and sweep failures. Nil discards.
	Logger *slog.Logger
}

func (c SweeperConfig) withDefaults() SweeperConfig {
	if c.HoldInterval == 0 {
		c.HoldInterval = 500 * time.Millisecond
	}
	if c.TransferInterval == 0 {
		c.TransferInterval = 5 * time.Second
	}
	if c.StuckAfter == 0 {
		c.StuckAfter = 30 * time.Second
	}
	if c.Batch == 0 {
		c.Batch = 100
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate returns an error for negative intervals.
func (c SweeperConfig) Validate() error {
	if c.HoldInterval < 0 || c.TransferInterval < 0 || c.StuckAfter < 0 || c.Batch < 0 {
		return fmt.Errorf("ledger: sweeper intervals and batch must not be negative")
	}
	return nil
}

// Sweeper is the ledger's housekeeping: it appends HoldExpired for holds whose expiry has
// passed, and finds cross-partition transfers that stayed pending too long (a crash between
// two steps) and finishes them. Any number of sweepers may run; every step is idempotent.
type Sweeper struct {
	l   *Ledger
	cfg SweeperConfig
}

// NewSweeper returns a sweeper over l, or an error for an invalid cfg.
func (l *Ledger) NewSweeper(cfg SweeperConfig) (*Sweeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sweeper{l: l, cfg: cfg.withDefaults()}, nil
}

// Run sweeps until ctx is done, then returns nil.
func (s *Sweeper) Run(ctx context.Context) error {
	holds := time.NewTicker(s.cfg.HoldInterval)
	defer holds.Stop()
	transfers := time.NewTicker(s.cfg.TransferInterval)
	defer transfers.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-holds.C:
			for p := 0; p < s.l.cfg.Partitions && ctx.Err() == nil; p++ {
				if _, err := s.l.expireDue(ctx, p, s.cfg.Batch); err != nil && ctx.Err() == nil {
					s.cfg.Logger.Warn("ledger sweeper: expiring holds failed", "partition", p, "err", err)
				}
			}
		case <-transfers.C:
			for p := 0; p < s.l.cfg.Partitions && ctx.Err() == nil; p++ {
				if err := s.sweepTransfers(ctx, p); err != nil && ctx.Err() == nil {
					s.cfg.Logger.Warn("ledger sweeper: finishing transfers failed", "partition", p, "err", err)
				}
			}
		}
	}
}

// sweepTransfers drives the transfers of partition p pending for longer than StuckAfter.
func (s *Sweeper) sweepTransfers(ctx context.Context, p int) error {
	cutoff := s.l.cfg.Clock().Add(-s.cfg.StuckAfter).UnixMilli()
	ids, err := s.l.store.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.l.store.keys.transfersPending(p),
		Start: "-inf", Stop: strconv.FormatInt(cutoff, 10), ByScore: true, Count: s.cfg.Batch}).Result()
	if err != nil {
		return storeErr(ctx, err)
	}
	for _, id := range ids {
		s.l.stats.transfersStuck.Add(1)
		t, err := s.l.driveTransfer(ctx, p, id)
		s.cfg.Logger.Warn("ledger sweeper: transfer was stuck pending", "transfer", id, "partition", p,
			"created_at", t.CreatedAt, "status_now", t.Status, "err", err)
	}
	return nil
}

// TransferManager is the transfer process manager: an outbox sink that finishes every
// cross-partition transfer whose debit it sees (a crash may have stopped the request that
// started it). Seeing an event twice is harmless: each step is recorded once.
type TransferManager struct{ l *Ledger }

// TransferManager returns the ledger's transfer process manager, to add to a relay's sinks.
func (l *Ledger) TransferManager() *TransferManager { return &TransferManager{l: l} }

// Deliver drives the transfers that msgs start or advance. It returns outbox.Permanent for a
// message that does not carry an event (ErrMalformedEvent) or whose data does not decode,
// and otherwise the first error that left a transfer unfinished (the relay then delivers
// again).
//
// The request that started a transfer usually finishes it: a request of this process still
// driving one is waited for (see driving), then the records of all the batch's transfers
// are read in one round trip (the event names the source account, whose partition holds
// the record) and only those still pending are driven. On a single Redis a TransferCredited
// needs no read: the commit that credited also completed the transfer.
func (m *TransferManager) Deliver(ctx context.Context, msgs []outbox.Message) error {
	type ref struct{ id, from string }
	var refs []ref
	for _, msg := range msgs {
		switch msg.Type {
		case EventTransferDebited, EventHoldCaptured: // see transferOf
		case EventTransferCredited:
			if m.l.creditCompletes() {
				continue // the credit's commit completed the transfer
			}
		default:
			continue // no transfer to drive: no need to decode the payload
		}
		e, err := DecodeEvent(msg)
		if err != nil {
			return outbox.Permanent(err)
		}
		id, from, err := m.transferOf(e)
		if err != nil {
			return outbox.Permanent(err)
		}
		if id != "" {
			refs = append(refs, ref{id, from})
		}
	}
	if len(refs) == 0 {
		return nil
	}
	for _, r := range refs {
		if err := m.l.driving.wait(ctx, r.id); err != nil {
			return err
		}
	}
	ks := m.l.store.keys
	pipe := m.l.store.rdb.Pipeline()
	recs := make([]*redis.MapStringStringCmd, len(refs))
	for i, r := range refs {
		recs[i] = pipe.HGetAll(ctx, ks.transfer(ks.partition(r.from), r.id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("ledger: transfer manager: %w", storeErr(ctx, err))
	}
	for i, r := range refs {
		// The event commits with its record: a missing one (ErrNotFound) cannot be.
		t, err := parseTransfer(r.id, recs[i].Val())
		if err == nil && t.Status == TransferPending {
			_, err = m.l.drive(ctx, t, nil)
		}
		if err != nil {
			return fmt.Errorf("ledger: transfer manager: %s: %w", r.id, err)
		}
	}
	return nil
}

// transferOf returns the ID of the cross-partition transfer an event belongs to and its
// source account, or "".
func (m *TransferManager) transferOf(e Event) (id, from string, err error) {
	switch e.Type {
	case EventTransferDebited, EventTransferCredited:
		var d TransferData
		if err := decodeData(e, &d); err != nil {
			return "", "", err
		}
		if m.l.store.keys.partition(d.From) != m.l.store.keys.partition(d.To) {
			return d.TransferID, d.From, nil
		}
	case EventHoldCaptured:
		var d HoldData
		if err := decodeData(e, &d); err != nil {
			return "", "", err
		}
		if d.To != "" && m.l.store.keys.partition(e.Account) != m.l.store.keys.partition(d.To) {
			return d.TransferID, e.Account, nil // a capture's transfer leaves the hold's account
		}
	}
	return "", "", nil
}
