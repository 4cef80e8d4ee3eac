package ledger

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every recorded refusal decodes to the same sentinel and text, marked replayed; an atomic
// batch's keeps its failing operation; what is not a refusal of the ledger's state is not
// recorded; a corrupt record is an internal error, not a guess.
func TestRefusalRecordRoundTrip(t *testing.T) {
	for _, r := range recordedRefusals {
		err := fmt.Errorf("%w: some detail", r.err)
		for _, in := range []error{err, &batchFailure{index: 3, err: err}} {
			raw, ok := encodeRefusal(in)
			require.True(t, ok, "%v", in)
			out := decodeRefusal(raw)
			require.ErrorIs(t, out, r.err)
			assert.True(t, IsReplayed(out))
			assert.Equal(t, in.Error(), out.Error())
			var bf *batchFailure
			if errors.As(in, &bf) {
				var got *batchFailure
				require.ErrorAs(t, out, &got)
				assert.Equal(t, 3, got.index)
			}
		}
	}
	for _, err := range []error{ErrInvalid, ErrVersionConflict, ErrStoreUnavailable, ErrLockUnavailable, ErrOverloaded,
		ErrIdempotencyKeyReused, context.Canceled, fmt.Errorf("%w: %w", ErrInternal, ErrInsufficientFunds), errNothingToDo} {
		_, ok := encodeRefusal(err)
		assert.False(t, ok, "%v is not a refusal to record", err)
	}
	for _, raw := range []string{`not json`, `{"code":"no_such_code","detail":"x"}`} {
		require.ErrorIs(t, decodeRefusal([]byte(raw)), ErrInternal, raw)
	}
}
