package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tally-ledger/tally/handlers"
)

// maxKeysFile bounds the keys file serve reads: a few thousand keys fit many times over.
const maxKeysFile = 16 << 20

// readKeys reads and validates the keys file at path.
func readKeys(path string) ([]handlers.Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--api-keys-file: %w", err)
	}
	if st.Size() > maxKeysFile {
		return nil, fmt.Errorf("--api-keys-file %s: larger than %d bytes", path, maxKeysFile)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--api-keys-file: %w", err)
	}
	keys, err := handlers.ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("--api-keys-file %s: %w", path, err)
	}
	return keys, nil
}

// loadKeys returns the key set of the keys file at path.
func loadKeys(path string) (*handlers.Keys, error) {
	keys, err := readKeys(path)
	if err != nil {
		return nil, err
	}
	return handlers.NewKeys(keys)
}

// notifyHUP starts catching SIGHUP (which would otherwise end the process) and returns
// the channel it arrives on and a function that stops catching it. serve calls it when it
// loads the keys, before it listens, so that no reload signal can kill it.
func notifyHUP() (<-chan os.Signal, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// reloadKeys rereads the keys file on every signal from hup until ctx ends. A valid file
// replaces the keys at once; an invalid one is logged and the keys in force stay. It logs
// how many keys are in force, never a token or hash.
func reloadKeys(ctx context.Context, log *slog.Logger, hup <-chan os.Signal, path string, keys *handlers.Keys) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-hup:
		}
		next, err := readKeys(path)
		if err == nil {
			err = keys.Replace(next)
		}
		if err != nil {
			log.Error("API keys not reloaded; the previous keys stay in force", "err", err, "keys", keys.Len())
			continue
		}
		log.Info("API keys reloaded", "file", path, "keys", keys.Len())
	}
}
