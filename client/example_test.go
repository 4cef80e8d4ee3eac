package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/tally-ledger/tally/client"
)

// Opening an account, depositing, and a refused withdrawal. (Compiled, not run: it needs
// a Tally on 127.0.0.1:8080; the package's tests run the same calls against a real one.)
func Example() {
	ctx := context.Background()
	c, err := client.New("http://127.0.0.1:8080",
		client.WithAPIKey("my-api-key-0123456789"),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 5, BaseDelay: 50 * time.Millisecond}))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.OpenAccount(ctx, client.OpenAccountRequest{ID: "alice"}); err != nil && !errors.Is(err, client.ErrAccountExists) {
		log.Fatal(err)
	}
	// A generated Idempotency-Key goes with the deposit and every retry of it: applied once.
	op, err := c.Deposit(ctx, "alice", "USD", 1500) // 15.00 USD in minor units
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(op.Account.Balances["USD"].Available)

	_, err = c.Withdraw(ctx, "alice", "USD", 1_000_000)
	var apiErr *client.Error
	switch {
	case errors.Is(err, client.ErrInsufficientFunds):
		fmt.Println("refused; nothing written")
	case errors.As(err, &apiErr):
		fmt.Println("API error", apiErr.Status, apiErr.Code, apiErr.RequestID)
	case err != nil:
		fmt.Println("no answer:", err) // transport error after every retry
	}
}

// A transfer across partitions may answer 202 pending; WaitTransfer follows it.
func ExampleClient_WaitTransfer() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.New("http://127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	t, err := c.CreateTransfer(ctx, client.TransferRequest{ID: "order-42", From: "alice", To: "bob", Currency: "USD", Amount: 250})
	if err != nil {
		log.Fatal(err)
	}
	if t.Status == client.TransferPending {
		if t, err = c.WaitTransfer(ctx, t.ID); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(t.Status) // completed, or refunded when bob refused the credit
}

// Reading an account's whole history, page by page.
func ExampleClient_AllEvents() {
	ctx := context.Background()
	c, err := client.New("http://127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	for e, err := range c.AllEvents(ctx, "alice", 0, 500) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e.Version, e.Type, string(e.Data))
	}
}
