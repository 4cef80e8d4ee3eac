package outbox

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/redistest"
)

// buggyEffect fails at run time on its third line.
var buggyEffect = NewEffect(`
local t = nil
return t.field`)

// An effect's Lua error names the line of the effect's body, not of the dedup script
// that wraps it, so that its author can find it.
func TestEffectErrorNamesItsLine(t *testing.T) {
	for _, b := range redistest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			rdb := b.Start(t)
			d, err := NewDedup(rdb, DedupConfig{Name: "lines"})
			require.NoError(t, err)
			_, err = d.Apply(context.Background(), msgOf(2, "k", 1), buggyEffect, nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), "effect line 3:")
		})
	}
}
