package handlers_test

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/require"
)

var updateAPIDoc = flag.Bool("update", false, "rewrite docs/api.md from openapi.json (TestAPIDoc)")

const apiDocPath = "../docs/api.md"

// TestAPIDoc: docs/api.md is openapi.json rendered, so the two cannot drift; -update
// rewrites it.
func TestAPIDoc(t *testing.T) {
	got := renderAPIDoc(mustSpec(t).doc)
	if *updateAPIDoc {
		require.NoError(t, os.WriteFile(apiDocPath, []byte(got), 0o644))
	}
	want, err := os.ReadFile(apiDocPath)
	require.NoError(t, err)
	if string(want) != got {
		w, g := strings.Split(string(want), "\n"), strings.Split(got, "\n")
		i := 0
		for i < len(w) && i < len(g) && w[i] == g[i] {
			i++
		}
		t.Fatalf("docs/api.md is not openapi.json rendered (first difference at line %d); run: go test ./handlers -run TestAPIDoc -update", i+1)
	}
}

// renderAPIDoc renders the document as Markdown: operations grouped by tag with their
// parameters, bodies and responses, then every schema.
func renderAPIDoc(doc *openapi3.T) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# HTTP API\n")
	p("<!-- Generated from handlers/openapi.json by TestAPIDoc: edit the spec, then run")
	p("     go test ./handlers -run TestAPIDoc -update -->\n")
	p("%s\n", text(doc.Info.Description))
	p("The machine-readable document is served at `GET /openapi.json` (OpenAPI %s).\n", doc.OpenAPI)
	for _, srv := range doc.Servers {
		p("**Server:** `%s`", srv.URL)
		for _, name := range slices.Sorted(maps.Keys(srv.Variables)) {
			v := srv.Variables[name]
			p("- `%s`: %s (default `%s`)", name, v.Description, v.Default)
		}
		p("")
	}
	for _, name := range slices.Sorted(maps.Keys(doc.Components.SecuritySchemes)) {
		p("**Authentication (`%s`):** %s\n", name, text(doc.Components.SecuritySchemes[name].Value.Description))
	}

	type op struct {
		method, path string
		*openapi3.Operation
	}
	byTag := map[string][]op{}
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Value(path)
		for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
			if o := item.GetOperation(method); o != nil {
				byTag[o.Tags[0]] = append(byTag[o.Tags[0]], op{method, path, o})
			}
		}
	}
	for _, ops := range byTag {
		slices.SortFunc(ops, func(a, b op) int { return strings.Compare(a.path+" "+a.method, b.path+" "+b.method) })
	}

	p("## Operations\n")
	p("| operation | request | summary |")
	p("|---|---|---|")
	for _, tag := range doc.Tags {
		for _, o := range byTag[tag.Name] {
			p("| [%s](#%s) | `%s %s` | %s |", o.OperationID, strings.ToLower(o.OperationID), o.method, o.path, cell(o.Summary))
		}
	}
	for _, tag := range doc.Tags {
		p("\n## %s\n\n%s", tag.Name, text(tag.Description))
		for _, o := range byTag[tag.Name] {
			p("\n### %s\n\n**`%s %s`** — %s\n", o.OperationID, o.method, o.path, o.Summary)
			if o.Description != "" {
				p("%s\n", text(o.Description))
			}
			auth := "a bearer API key when the server has keys"
			if o.Security != nil && slices.ContainsFunc(*o.Security, func(r openapi3.SecurityRequirement) bool { return len(r) == 0 }) && len(*o.Security) == 1 {
				auth = "none"
			}
			p("Authentication: %s.\n", auth)
			if len(o.Parameters) > 0 {
				p("| parameter | in | type | required | description |")
				p("|---|---|---|---|---|")
				for _, pr := range o.Parameters {
					v := pr.Value
					p("| `%s` | %s | %s | %s | %s |", v.Name, v.In, typeOf(v.Schema), yes(v.Required), cell(v.Description))
				}
				p("")
			}
			if rb := o.RequestBody; rb != nil {
				for _, ct := range slices.Sorted(maps.Keys(rb.Value.Content)) {
					p("Request body (`%s`, %s): %s\n", ct, map[bool]string{true: "required", false: "optional"}[rb.Value.Required], typeOf(rb.Value.Content[ct].Schema))
				}
			}
			p("| status | description | body |")
			p("|---|---|---|")
			responses := o.Responses.Map()
			for _, code := range slices.Sorted(maps.Keys(responses)) {
				r := responses[code]
				desc := *r.Value.Description
				if r.Description != nil {
					desc = *r.Description
				}
				for _, h := range slices.Sorted(maps.Keys(r.Value.Headers)) {
					desc += fmt.Sprintf("; header `%s`%s: %s", h, map[bool]string{true: " (always)"}[r.Value.Headers[h].Value.Required], r.Value.Headers[h].Value.Description)
				}
				var body []string
				for _, ct := range slices.Sorted(maps.Keys(r.Value.Content)) {
					body = append(body, fmt.Sprintf("%s `%s`", typeOf(r.Value.Content[ct].Schema), ct))
				}
				p("| %s | %s | %s |", code, cell(desc), strings.Join(body, ", "))
			}
		}
	}

	p("\n## Schemas")
	for _, name := range slices.Sorted(maps.Keys(doc.Components.Schemas)) {
		v := doc.Components.Schemas[name].Value
		p("\n### Schema: %s\n", name)
		if v.Description != "" {
			p("%s\n", text(v.Description))
		}
		if len(v.Properties) == 0 {
			p("%s", strings.TrimSpace(typeOf(&openapi3.SchemaRef{Value: v})+" "+constraints(v)))
			continue
		}
		p("| field | type | required | description |")
		p("|---|---|---|---|")
		for _, f := range slices.Sorted(maps.Keys(v.Properties)) {
			fv := v.Properties[f]
			desc := fv.Value.Description
			if fv.Ref == "" {
				desc = strings.TrimSpace(desc + " " + constraints(fv.Value))
			}
			p("| `%s` | %s | %s | %s |", f, typeOf(fv), yes(slices.Contains(v.Required, f)), cell(desc))
		}
		if v.AdditionalProperties.Has != nil && !*v.AdditionalProperties.Has {
			p("\nOther fields are refused (400).")
		}
	}
	return b.String()
}

// typeOf names a schema: a link for a reference, else its JSON type(s).
func typeOf(ref *openapi3.SchemaRef) string {
	if ref == nil {
		return "any"
	}
	if ref.Ref != "" {
		name := ref.Ref[strings.LastIndex(ref.Ref, "/")+1:]
		return fmt.Sprintf("[%s](#schema-%s)", name, strings.ToLower(name))
	}
	v := ref.Value
	if len(v.OneOf) > 0 {
		var alts []string
		for _, o := range v.OneOf {
			alts = append(alts, typeOf(o))
		}
		return strings.Join(alts, " or ")
	}
	if v.Const != nil {
		return fmt.Sprintf("`%v`", v.Const)
	}
	types := v.Type.Slice()
	switch {
	case len(types) == 0:
		return "any"
	case types[0] == "array":
		return "array of " + typeOf(v.Items)
	case types[0] == "object" && v.AdditionalProperties.Schema != nil:
		return "map of " + typeOf(v.AdditionalProperties.Schema)
	}
	t := strings.Join(types, " or ")
	if v.Format != "" {
		t += " (" + v.Format + ")"
	}
	return t
}

// constraints lists a schema's validation keywords for a description.
func constraints(v *openapi3.Schema) string {
	var c []string
	if len(v.Enum) > 0 {
		var vals []string
		for _, e := range v.Enum {
			vals = append(vals, fmt.Sprintf("`%v`", e))
		}
		c = append(c, "one of "+strings.Join(vals, ", "))
	}
	if v.Pattern != "" {
		c = append(c, "matches `"+v.Pattern+"`")
	}
	if v.Min != nil {
		c = append(c, "minimum "+strconv.FormatFloat(*v.Min, 'f', -1, 64))
	}
	if v.Max != nil {
		c = append(c, "maximum "+strconv.FormatFloat(*v.Max, 'f', -1, 64))
	}
	if v.MinItems > 0 {
		c = append(c, fmt.Sprintf("at least %d items", v.MinItems))
	}
	if v.MaxItems != nil {
		c = append(c, fmt.Sprintf("at most %d items", *v.MaxItems))
	}
	if v.MaxProps != nil {
		c = append(c, fmt.Sprintf("at most %d entries", *v.MaxProps))
	}
	if v.Default != nil {
		c = append(c, fmt.Sprintf("default `%v`", v.Default))
	}
	if v.Deprecated {
		c = append(c, "deprecated")
	}
	if len(c) == 0 {
		return ""
	}
	return "(" + strings.Join(c, "; ") + ")"
}

// cell makes text fit in a Markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(text(s))
}

// text keeps a description's <placeholders> from reading as HTML.
func text(s string) string { return strings.ReplaceAll(s, "<", "&lt;") }

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
