package main

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
)

// writeKeys writes keys as a keys file at path (replacing it at once, as an operator's
// rename would).
func writeKeys(t *testing.T, path string, keys []handlers.Key) {
	t.Helper()
	data, err := json.Marshal(keys)
	require.NoError(t, err)
	writeAtomically(t, path, data)
}

// writeAtomically replaces path with data through a rename.
func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path+".tmp", data, 0o600))
	require.NoError(t, os.Rename(path+".tmp", path))
}
