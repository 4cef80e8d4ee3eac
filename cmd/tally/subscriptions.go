package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/outbox"
)

// webhookSub is one webhook subscription: where events go, the secret that signs them, and
// which events (all for a zero filter).
type webhookSub struct {
	url    string
	secret string
	filter outbox.Filter
}

// webhookSubsFlag is the repeatable --webhook-sub. Each value holds one or more
// subscriptions separated by white space (so TALLY_WEBHOOK_SUB can hold several); each is
// comma-separated key=value fields: url (required), secret-env (required: the environment
// variable holding the secret, which never goes on a command line), types (|-separated
// event types) and prefix (account-ID prefix). A URL with a comma must encode it (%2C).
type webhookSubsFlag struct{ specs []string }

func (f *webhookSubsFlag) String() string { return strings.Join(f.specs, " ") }

func (f *webhookSubsFlag) Set(s string) error {
	specs := strings.Fields(s)
	if len(specs) == 0 {
		return errors.New("empty subscription")
	}
	f.specs = append(f.specs, specs...)
	return nil
}

// webhookSubs returns the webhook subscriptions of the flags: --webhook (with
// --webhook-secret, --webhook-types and --webhook-account-prefix) first, then every
// --webhook-sub. It returns an error naming the flag for a malformed subscription, an
// unknown event type (listing the known ones), a missing secret, or a filter without
// --webhook. URLs are checked by outbox.WebhookSinkConfig.Validate when the sinks are made.
func (f *relayFlags) webhookSubs(getenv func(string) string) ([]webhookSub, error) {
	var subs []webhookSub
	filter, err := newFilter("--webhook-types", splitList(f.webhookTypes), "--webhook-account-prefix", f.webhookPrefix)
	if err != nil {
		return nil, err
	}
	switch {
	case f.webhook != "" || f.webhookSecret != "":
		subs = append(subs, webhookSub{url: f.webhook, secret: f.webhookSecret, filter: filter})
	case !filter.IsZero():
		return nil, errors.New("--webhook-types and --webhook-account-prefix filter --webhook, which is not given")
	}
	for _, spec := range f.webhookSubsList.specs {
		s, err := parseWebhookSub(spec, getenv)
		if err != nil {
			return nil, fmt.Errorf("--webhook-sub %q: %w", redactSub(spec), err)
		}
		subs = append(subs, s)
	}
	return subs, nil
}

// parseWebhookSub reads one --webhook-sub value.
func parseWebhookSub(spec string, getenv func(string) string) (webhookSub, error) {
	var s webhookSub
	var types []string
	var secretEnv, prefix string
	seen := map[string]bool{}
	for _, field := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(field, "=")
		if !ok || v == "" {
			return s, fmt.Errorf("field %q is not key=value", field)
		}
		if seen[k] {
			return s, fmt.Errorf("%s is given twice", k)
		}
		seen[k] = true
		switch k {
		case "url":
			s.url = v
		case "secret-env":
			secretEnv = v
		case "types":
			types = strings.Split(v, "|")
		case "prefix":
			prefix = v
		case "secret":
			return s, errors.New("a secret is never given on the command line: put it in an environment variable and name it with secret-env=NAME")
		default:
			return s, fmt.Errorf("unknown field %q (fields: url, secret-env, types, prefix)", k)
		}
	}
	if s.url == "" || secretEnv == "" {
		return s, errors.New("url and secret-env are required")
	}
	if s.secret = getenv(secretEnv); s.secret == "" {
		return s, fmt.Errorf("secret-env: environment variable %s is empty or not set", secretEnv)
	}
	var err error
	s.filter, err = newFilter("types", types, "prefix", prefix)
	return s, err
}

// redactSub returns a --webhook-sub value for an error message: a secret given by mistake
// is hidden, and of the URL, which may carry credentials in its user info or query, only
// the scheme and host are kept.
func redactSub(spec string) string {
	fields := strings.Split(spec, ",")
	for i, field := range fields {
		if strings.HasPrefix(field, "secret=") {
			fields[i] = "secret=(hidden)"
		}
		if v, ok := strings.CutPrefix(field, "url="); ok {
			// net/url, not a cut at "/": "https://h?token=x" has no path, and "@" may be in one.
			if u, err := url.Parse(v); err == nil && u.Host != "" {
				fields[i] = "url=" + u.Scheme + "://" + u.Host + "/…"
			} else {
				fields[i] = "url=(not shown)"
			}
		}
	}
	return strings.Join(fields, ",")
}

// newFilter returns the filter of an event type list and an account-ID prefix, or an error
// naming typesFlag for an unknown type (with the known ones) and prefixFlag for a prefix no
// account ID can start with.
func newFilter(typesFlag string, types []string, prefixFlag, prefix string) (outbox.Filter, error) {
	known := ledger.EventTypes()
	for _, t := range types {
		if !slices.Contains(known, t) {
			return outbox.Filter{}, fmt.Errorf("%s: unknown event type %q; known types: %s", typesFlag, t, strings.Join(known, ", "))
		}
	}
	if prefix != "" {
		if err := ledger.ValidateID(prefixFlag, prefix); err != nil {
			return outbox.Filter{}, fmt.Errorf("%s: an account-ID prefix is 1..64 of A-Z a-z 0-9 . _ -: %w", prefixFlag, err)
		}
	}
	return outbox.Filter{Types: types, KeyPrefix: prefix}, nil
}

// sinkPlan is what the sink flags ask for, checked (see checkSinks).
type sinkPlan struct {
	stream   outbox.Filter // --sink-stream's filter
	webhooks []webhookSub
}

// checkSinks checks the sink flags before anything starts — the webhook subscriptions (see
// webhookSubs) with their URLs and secrets as the webhook sink will take them, and the
// stream sink's filter — and keeps the result for newRelay.
func (f *relayFlags) checkSinks() error {
	subs, err := f.webhookSubs(os.Getenv)
	if err != nil {
		return err
	}
	for _, sub := range subs {
		if err := sub.config().Validate(); err != nil {
			return err
		}
	}
	stream, err := f.streamFilter()
	if err != nil {
		return err
	}
	f.plan = &sinkPlan{stream: stream, webhooks: subs}
	return nil
}

// config is the webhook sink's configuration of the subscription.
func (sub webhookSub) config() outbox.WebhookSinkConfig {
	return outbox.WebhookSinkConfig{URL: sub.url, Secret: []byte(sub.secret)}
}

// streamFilter returns the filter of --sink-stream, or an error for a filter without it.
func (f *relayFlags) streamFilter() (outbox.Filter, error) {
	filter, err := newFilter("--sink-stream-types", splitList(f.streamTypes), "--sink-stream-account-prefix", f.streamPrefix)
	if err == nil && f.stream == "" && !filter.IsZero() {
		err = errors.New("--sink-stream-types and --sink-stream-account-prefix filter --sink-stream, which is not given")
	}
	return filter, err
}
