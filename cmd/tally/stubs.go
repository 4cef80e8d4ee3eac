package main

import (
	"context"
	"errors"
	"io"
)

func runRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("relay: not yet")
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("bench: not yet")
}

