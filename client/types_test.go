package client

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/handlers"
	"github.com/tally-ledger/tally/ledger"
)

// The client copies the ledger's wire types and constants rather than importing package
// ledger (which would pull go-redis and the rest into every client user). These tests keep
// the copies in step: each is compared with the ledger's original and with
// handlers/openapi.json, so a value or field added, renamed or dropped on one side fails.

// openAPISchemas returns components.schemas of handlers/openapi.json.
func openAPISchemas(t *testing.T) map[string]schema {
	t.Helper()
	raw, err := os.ReadFile("../handlers/openapi.json")
	require.NoError(t, err)
	var doc struct {
		Components struct {
			Schemas map[string]schema `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.NotEmpty(t, doc.Components.Schemas, "openapi.json: components.schemas moved; update openAPISchemas")
	return doc.Components.Schemas
}

type schema struct {
	Properties map[string]struct {
		Enum       []string `json:"enum"`
		Deprecated bool     `json:"deprecated"`
	} `json:"properties"`
}

// constBlocks returns the string constants of the const blocks in dir's non-test Go
// files, by the first line of the block's doc comment, each as name → value.
func constBlocks(t *testing.T, dir string) map[string]map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	require.NoError(t, err)
	fset := token.NewFileSet()
	blocks := map[string]map[string]string{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		require.NoError(t, err)
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST || gd.Doc == nil {
				continue
			}
			doc := strings.SplitN(gd.Doc.Text(), "\n", 2)[0]
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, id := range vs.Names {
					bl, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || bl.Kind != token.STRING {
						continue
					}
					v, err := strconv.Unquote(bl.Value)
					require.NoError(t, err)
					if blocks[doc] == nil {
						blocks[doc] = map[string]string{}
					}
					blocks[doc][id.Name] = v
				}
			}
		}
	}
	return blocks
}

// block returns the constants of the one block whose doc comment starts with prefix.
func block(t *testing.T, blocks map[string]map[string]string, dir, prefix string) map[string]string {
	t.Helper()
	var found map[string]string
	for doc, consts := range blocks {
		if strings.HasPrefix(doc, prefix) {
			require.Nil(t, found, "%s: two const blocks documented %q…", dir, prefix)
			found = consts
		}
	}
	require.NotEmpty(t, found, "%s: no const block documented %q… (moved? update TestConstantsMatchServer)", dir, prefix)
	return found
}

// TestConstantsMatchServer: the client's event types, statuses and batch operation types
// are the ledger's (same names, same values) and the enum openapi.json documents.
func TestConstantsMatchServer(t *testing.T) {
	schemas := openAPISchemas(t)
	clientConsts := constBlocks(t, ".")
	ledgerConsts := constBlocks(t, "../ledger")
	for _, g := range []struct {
		doc                        string // the doc comment both blocks start with
		ledgerPrefix, clientPrefix string // the constants' names: ledger.StatusOpen is AccountOpen
		schema, property           string // the enum in openapi.json
	}{
		{"Event types", "Event", "Event", "Event", "type"},
		{"Account statuses", "Status", "Account", "Account", "status"},
		{"Transfer statuses", "Transfer", "Transfer", "Transfer", "status"},
		{"Hold statuses", "Hold", "Hold", "Hold", "status"},
		{"Batch operation types", "Op", "Op", "BatchOperation", "type"},
	} {
		ours := block(t, clientConsts, "client", g.doc)
		theirs := map[string]string{}
		for name, v := range block(t, ledgerConsts, "ledger", g.doc) {
			theirs[g.clientPrefix+strings.TrimPrefix(name, g.ledgerPrefix)] = v
		}
		assert.Equal(t, theirs, ours, "%s: client's constants (ledger's renamed %s… → %s…)", g.doc, g.ledgerPrefix, g.clientPrefix)

		var values []string
		for _, v := range ours {
			values = append(values, v)
		}
		enum := schemas[g.schema].Properties[g.property].Enum
		require.NotEmpty(t, enum, "openapi.json: %s.%s has no enum", g.schema, g.property)
		assert.ElementsMatch(t, enum, values, "%s: client's constants vs openapi.json's %s.%s enum", g.doc, g.schema, g.property)
	}
	// What a subscription may filter on (ledger.EventTypes) is every event type declared.
	declared := block(t, ledgerConsts, "ledger", "Event types")
	require.NotEmpty(t, declared)
	assert.ElementsMatch(t, slices.Collect(maps.Values(declared)), ledger.EventTypes(), "ledger.EventTypes vs the ledger's Event types block")
}

// jsonFields returns the JSON names of a struct type's exported fields.
func jsonFields(typ reflect.Type) []string {
	var names []string
	for f := range typ.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		names = append(names, name)
	}
	return names
}

// TestTypesMatchServer: every client type has the fields of the schema openapi.json gives
// its JSON (deprecated fields aside), and so do the server types the API writes as they
// are (the client's copies' originals).
func TestTypesMatchServer(t *testing.T) {
	schemas := openAPISchemas(t)
	for _, c := range []struct {
		schema string
		types  []any // the client's type, then the server's, if the API writes one as is
	}{
		{"Balance", []any{Balance{}, ledger.Balance{}}},
		{"Account", []any{Account{}, ledger.Account{}}},
		{"OpenAccount", []any{OpenAccountRequest{}}},
		{"Operation", []any{Operation{}}},
		{"Event", []any{Event{}, ledger.Event{}}},
		{"EventsPage", []any{EventsPage{}}},
		{"CreateTransfer", []any{TransferRequest{}}},
		{"Transfer", []any{Transfer{}, ledger.Transfer{}}},
		{"PlaceHold", []any{HoldRequest{}}},
		{"CaptureHold", []any{CaptureRequest{}}},
		{"Hold", []any{Hold{}, ledger.Hold{}}},
		{"HoldsPage", []any{HoldsPage{}}},
		{"PatchAccount", []any{patchAccountBody{}}},
		{"CreateAlert", []any{AlertRequest{}}},
		{"Alert", []any{Alert{}, ledger.Alert{}}},
		{"AlertsPage", []any{AlertsPage{}}},
		{"TransfersPage", []any{TransfersPage{}, ledger.TransferPage{}}},
		{"AccountsPage", []any{AccountsPage{}, ledger.AccountPage{}}},
		{"BatchOperation", []any{BatchOp{}}},
		{"Batch", []any{BatchRequest{}}},
		{"BatchResponse", []any{BatchResponse{}}},
		{"BatchResult", []any{BatchResult{}}},
		{"PartitionStatus", []any{PartitionStatus{}, handlers.PartitionStatus{}}},
		{"Problem", []any{problem{}, handlers.Problem{}}},
	} {
		s, ok := schemas[c.schema]
		require.True(t, ok, "openapi.json has no schema %s", c.schema)
		var want []string
		for name, p := range s.Properties {
			if !p.Deprecated {
				want = append(want, name)
			}
		}
		for _, v := range c.types {
			typ := reflect.TypeOf(v)
			assert.ElementsMatch(t, want, jsonFields(typ), "%s's JSON fields vs openapi.json's %s", typ, c.schema)
		}
	}
}

// TestClientCoversEveryOperation: every operation of openapi.json has its Client method,
// so an operation added to the API without one fails here. The operations for browsers and
// scrapers (the console, the metrics, the document itself) are not the client's.
func TestClientCoversEveryOperation(t *testing.T) {
	methods := map[string]string{
		"openAccount": "OpenAccount", "getAccount": "Account", "listAccountEvents": "Events", "getPastBalances": "BalancesAt",
		"deposit": "Deposit", "withdraw": "Withdraw", "closeAccount": "CloseAccount",
		"placeHold": "PlaceHold", "listHolds": "Holds", "getHold": "Hold", "captureHold": "CaptureHold",
		"voidHold": "VoidHold", "createTransfer": "CreateTransfer", "getTransfer": "Transfer",
		"runBatch": "Batch", "getRelayStatus": "RelayStatus", "replayDeadLetters": "ReplayDeadLetters",
		"checkLiveness": "Health", "checkReadiness": "Ready",
		"updateAccount": "SetOverdraftLimit", "createAlert": "CreateAlert", "listAlerts": "Alerts", "deleteAlert": "DeleteAlert",
		"getConsole": "", "getConsoleAsset": "", "getMetrics": "", "getOpenAPI": "",
		"listTransfersByMetadata": "TransfersByMetadata", "listAccountsByMetadata": "AccountsByMetadata",
	}
	raw, err := os.ReadFile("../handlers/openapi.json")
	require.NoError(t, err)
	var doc struct {
		Paths map[string]map[string]struct {
			OperationID string `json:"operationId"`
		} `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	client := reflect.TypeOf(&Client{})
	seen := 0
	for path, item := range doc.Paths {
		for method, op := range item {
			if op.OperationID == "" {
				continue // a path-level field, not an operation
			}
			seen++
			name, ok := methods[op.OperationID]
			if !assert.True(t, ok, "%s %s (%s) has no Client method: add one, and it to this table", method, path, op.OperationID) || name == "" {
				continue
			}
			_, found := client.MethodByName(name)
			assert.True(t, found, "%s: no method Client.%s", op.OperationID, name)
		}
	}
	assert.Equal(t, len(methods), seen, "operations in the table vs in openapi.json")
}

// TestClientImportsNoServerCode: the reason the types above are copies. Package client
// imports the standard library and internal/backoff only, so a program that uses it does
// not link the ledger, go-redis or gin.
func TestClientImportsNoServerCode(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			require.NoError(t, err)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") && path != "github.com/tally-ledger/tally/internal/backoff" {
				t.Errorf("%s imports %s: package client imports the standard library and internal/backoff only", name, path)
			}
		}
	}
}
