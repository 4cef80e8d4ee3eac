package outbox

import (
	"context"
	"errors"
)

// Sink delivers messages to a consumer. Deliver must return nil only when every message in
// msgs was accepted by the consumer; on error the relay retries the messages (so a sink sees
// at-least-once delivery and consumers deduplicate by Message.ID). Messages of one key
// arrive in sequence order (with the exceptions Relay lists). An error wrapped with
// Permanent is not retried: the relay moves the message to the dead-letter stream at once.
type Sink interface {
	Deliver(ctx context.Context, msgs []Message) error
}

// ErrPermanent marks a delivery failure that retrying cannot fix (for example a webhook
// answering 400). Test with errors.Is(err, ErrPermanent).
var ErrPermanent = errors.New("permanent delivery failure")

type permanentError struct{ err error }

func (p permanentError) Error() string        { return p.err.Error() }
func (p permanentError) Unwrap() []error      { return []error{p.err, ErrPermanent} }
func (p permanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent wraps err so that errors.Is(result, ErrPermanent) is true and errors.Is still
// finds err. Permanent(nil) returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}
