package ledger_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// TestEventTypesComplete: EventTypes lists exactly the string constants of the package's
// const block documented "Event types", so that a new event type cannot be left out of the
// types a subscription may filter on.
func TestEventTypesComplete(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	var declared []string
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		require.NoError(t, err)
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST || gd.Doc == nil || !strings.HasPrefix(gd.Doc.Text(), "Event types") {
				continue
			}
			for _, spec := range gd.Specs {
				for _, v := range spec.(*ast.ValueSpec).Values {
					if bl, ok := v.(*ast.BasicLit); ok && bl.Kind == token.STRING {
						s, err := strconv.Unquote(bl.Value)
						require.NoError(t, err)
						declared = append(declared, s)
					}
				}
			}
		}
	}
	require.NotEmpty(t, declared, "no const block documented \"Event types\" found")
	require.ElementsMatch(t, declared, ledger.EventTypes())
}
