//go:build unix

// Package cputime reads the CPU time this process used, for the bench's per-operation CPU
// columns and the go test benchmarks that report it.
package cputime

import (
	"syscall"
	"time"
)

// Process returns the CPU time (user and system) this process used so far; false when it
// cannot be read.
func Process() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
