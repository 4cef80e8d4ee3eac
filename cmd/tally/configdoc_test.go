package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var updateConfigDoc = flag.Bool("update", false, "rewrite docs/configuration.md's generated flag tables")

// configDocPath is the reference of every flag and environment variable.
const configDocPath = "../../docs/configuration.md"

// generatedMarker separates docs/configuration.md's hand-written part from the tables
// generated from the commands' own -h output.
const generatedMarker = "<!-- Generated from `tally <command> -h` by TestConfigurationDoc; do not edit below. -->"

// TestConfigurationDoc fails when a flag is added, removed or changed without
// docs/configuration.md following: the tables below its marker are rendered from each
// command's -h output. `go test ./cmd/tally -run TestConfigurationDoc -update` rewrites them.
func TestConfigurationDoc(t *testing.T) {
	doc, err := os.ReadFile(configDocPath)
	require.NoError(t, err)
	head, _, found := strings.Cut(string(doc), generatedMarker)
	require.True(t, found, "docs/configuration.md lacks the marker %q", generatedMarker)

	var b strings.Builder
	b.WriteString(generatedMarker + "\n")
	for _, cmd := range []string{"serve", "relay", "verify", "bench"} {
		flags := commandFlags(t, cmd)
		require.NotEmpty(t, flags, cmd)
		fmt.Fprintf(&b, "\n### tally %s\n\n| flag | environment | default | meaning |\n|---|---|---|---|\n", cmd)
		for _, f := range flags {
			fmt.Fprintf(&b, "| `--%s`%s | `%s` | %s | %s |\n", f.name, typeSuffix(f.typ), envVar(f.name), f.defaultCell(), mdEscape(f.usage))
		}
	}
	want := head + b.String()
	if *updateConfigDoc {
		require.NoError(t, os.WriteFile(configDocPath, []byte(want), 0o644))
		return
	}
	require.Equal(t, want, string(doc), "docs/configuration.md is stale: run go test ./cmd/tally -run TestConfigurationDoc -update")
}

// TestCommandFlagsParser guards the parser of -h output the doc is generated from: it must
// see every flag of a flag set, with its type, usage and default.
func TestCommandFlagsParser(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("alpha", "a b", "first\nsecond line")
	fs.Bool("on", true, "a switch")
	fs.Bool("off", false, "another")
	fs.Duration("wait", 0, "how `long` to wait")
	fs.Int("n", 3, "count")
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.PrintDefaults()
	got := parseDefaults(out.String())
	require.Equal(t, []docFlag{
		{name: "alpha", typ: "string", usage: "first second line", def: `"a b"`},
		{name: "n", typ: "int", usage: "count", def: "3"},
		{name: "off", usage: "another"},
		{name: "on", usage: "a switch", def: "true"},
		{name: "wait", typ: "long", usage: "how long to wait"},
	}, got)
}

type docFlag struct {
	name, typ, usage, def string
}

func (f docFlag) defaultCell() string {
	if f.def == "" {
		return ""
	}
	return "`" + strings.Trim(f.def, `"`) + "`"
}

// commandFlags runs `tally <cmd> -h` and returns the flags its usage lists.
func commandFlags(t *testing.T, cmd string) []docFlag {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{cmd, "-h"}, &stdout, &stderr)
	require.True(t, errors.Is(err, flag.ErrHelp), "tally %s -h: %v", cmd, err)
	_, defaults, ok := strings.Cut(stderr.String(), "\nflags:\n")
	require.True(t, ok, "tally %s -h printed no flags section:\n%s", cmd, stderr.String())
	return parseDefaults(defaults)
}

// flagLine is the first line of one flag in flag.PrintDefaults output: "  -name [type]",
// followed by the usage on the same line after a tab when the name is short.
var flagLine = regexp.MustCompile(`^  -(\S+)(?: (\S+))?(?:\t(.*))?$`)

// parseDefaults reads flag.PrintDefaults output.
func parseDefaults(s string) []docFlag {
	var flags []docFlag
	for _, line := range strings.Split(s, "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags = append(flags, docFlag{name: m[1], typ: m[2], usage: m[3]})
			continue
		}
		if rest, ok := strings.CutPrefix(line, "    \t"); ok && len(flags) > 0 {
			f := &flags[len(flags)-1]
			f.usage = strings.TrimSpace(f.usage + " " + rest)
		}
	}
	for i := range flags {
		f := &flags[i]
		if j := strings.LastIndex(f.usage, " (default "); j >= 0 && strings.HasSuffix(f.usage, ")") {
			f.def = f.usage[j+len(" (default ") : len(f.usage)-1]
			f.usage = f.usage[:j]
		}
	}
	return flags
}

func typeSuffix(typ string) string {
	if typ == "" {
		return ""
	}
	return " " + typ
}

func mdEscape(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
