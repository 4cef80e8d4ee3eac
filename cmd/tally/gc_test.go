package main

import (
	"math"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// serve and relay raise GOGC and set a soft memory limit, unless the operator set them.
func TestGCDefaults(t *testing.T) {
	percent, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(percent); debug.SetMemoryLimit(limit) })

	gcDefaults(func(string) string { return "" })
	require.Equal(t, defaultGCPercent, debug.SetGCPercent(100))
	require.Equal(t, int64(defaultMemoryLimit), debug.SetMemoryLimit(math.MaxInt64))

	env := map[string]string{"GOGC": "150", "GOMEMLIMIT": "1GiB"} // the runtime read them at start
	gcDefaults(func(k string) string { return env[k] })
	require.Equal(t, 100, debug.SetGCPercent(100), "GOGC set: left alone")
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(math.MaxInt64), "GOMEMLIMIT set: left alone")
}
