package ledger

// EventTypes returns every event type of an account's stream (the Event* constants), in
// the order they are declared: what a subscription may filter on. The client's
// TestConstantsMatchServer fails when a constant is added without being listed here.
func EventTypes() []string {
	return []string{
		EventAccountOpened, EventDeposited, EventWithdrawn,
		EventTransferDebited, EventTransferCredited, EventTransferRefunded,
		EventHoldPlaced, EventHoldCaptured, EventHoldVoided, EventHoldExpired,
		EventAccountClosed,
		EventOverdraftLimitSet, EventAlertCreated, EventAlertDeleted, EventBalanceAlert,
	}
}
