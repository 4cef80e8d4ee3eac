package bench

import (
	"context"
	"errors"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

// currency is the currency of every operation of the load.
const currency = "USD"

// holdTimeout is the timeout of every hold the load places: far beyond any run, so no
// hold expires while the bench resolves it.
const holdTimeout = time.Hour

// driver performs the operations of one run, on the library or over HTTP. Its errors are
// ledger errors (library) or ProblemError / TransportError (HTTP), for Classify.
type driver interface {
	// open opens an account without allow_negative and deposits seed into it (when
	// positive), retrying answers that leave the outcome unknown.
	open(ctx context.Context, id string, seed int64) error
	deposit(ctx context.Context, account string, amount int64) error
	withdraw(ctx context.Context, account string, amount int64) error
	// transfer creates transfer id; it returns its status (completed, pending, refunded).
	// Asked again with the same arguments it returns the transfer as it stands now.
	transfer(ctx context.Context, id, from, to string, amount int64) (string, error)
	// placeHold places hold id; asked again, it replays.
	placeHold(ctx context.Context, account, id string, amount int64) error
	captureHold(ctx context.Context, account, id string) error
	voidHold(ctx context.Context, account, id string) error
	// hold returns the status of a hold (pending, captured, voided, expired), or
	// ledger.ErrNotFound / a 404 ProblemError when it was never placed.
	hold(ctx context.Context, account, id string) (string, error)
	// account returns an account's snapshot.
	account(ctx context.Context, id string) (*ledger.Account, error)
	// replay rebuilds an account's balances and version from its event stream.
	replay(ctx context.Context, id string) (*ledger.Account, error)
}

// libraryDriver runs the operations through a Ledger.
type libraryDriver struct{ l *ledger.Ledger }

func (d libraryDriver) open(ctx context.Context, id string, seed int64) error {
	if _, err := d.l.OpenAccount(ctx, ledger.OpenAccount{ID: id}, ledger.WriteOptions{IdempotencyKey: "open"}); err != nil {
		return err
	}
	if seed <= 0 {
		return nil
	}
	_, err := d.l.Deposit(ctx, ledger.Deposit{Account: id, Currency: currency, Amount: seed}, ledger.WriteOptions{IdempotencyKey: "seed"})
	return err
}

func (d libraryDriver) deposit(ctx context.Context, account string, amount int64) error {
	_, err := d.l.Deposit(ctx, ledger.Deposit{Account: account, Currency: currency, Amount: amount}, ledger.WriteOptions{})
	return err
}

func (d libraryDriver) withdraw(ctx context.Context, account string, amount int64) error {
	_, err := d.l.Withdraw(ctx, ledger.Withdraw{Account: account, Currency: currency, Amount: amount}, ledger.WriteOptions{})
	return err
}

func (d libraryDriver) transfer(ctx context.Context, id, from, to string, amount int64) (string, error) {
	res, err := d.l.CreateTransfer(ctx, ledger.TransferRequest{ID: id, From: from, To: to, Currency: currency, Amount: amount})
	if err != nil {
		return "", err
	}
	return res.Transfer.Status, nil
}

func (d libraryDriver) placeHold(ctx context.Context, account, id string, amount int64) error {
	_, err := d.l.PlaceHold(ctx, ledger.PlaceHold{Account: account, ID: id, Currency: currency, Amount: amount, Timeout: holdTimeout})
	return err
}

func (d libraryDriver) captureHold(ctx context.Context, account, id string) error {
	_, err := d.l.CaptureHold(ctx, account, id, 0, "", ledger.WriteOptions{})
	return err
}

func (d libraryDriver) voidHold(ctx context.Context, account, id string) error {
	_, err := d.l.VoidHold(ctx, account, id, ledger.WriteOptions{})
	return err
}

func (d libraryDriver) hold(ctx context.Context, account, id string) (string, error) {
	h, err := d.l.Hold(ctx, account, id)
	if err != nil {
		return "", err
	}
	return h.Status, nil
}

func (d libraryDriver) account(ctx context.Context, id string) (*ledger.Account, error) {
	return d.l.Account(ctx, id)
}

func (d libraryDriver) replay(ctx context.Context, id string) (*ledger.Account, error) {
	return d.l.Replay(ctx, id)
}

// notFound reports whether err says a hold or transfer does not exist.
func notFound(err error) bool {
	var pe *ProblemError
	return errors.Is(err, ledger.ErrNotFound) || (errors.As(err, &pe) && pe.Status == 404)
}
