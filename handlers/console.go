package handlers

import (
	"embed"
	"net/http"
	"path"

	"github.com/gin-gonic/gin"
)

// consoleFiles are the operator console's page, script and style (docs/console.md): plain
// files, embedded so serve needs nothing beside its binary and no build step.
//
//go:embed console/index.html console/console.js console/console.css
var consoleFiles embed.FS

// consoleTypes are the content types of the console's assets, by extension. Only these
// files are served; anything else under /console/ is a 404 problem.
var consoleTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// consoleCSP allows the console's own script, style and API calls and nothing else: no
// inline script or style (data shown by the page can never run), no other origin, no
// framing (no clickjacking of the replay button).
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// consolePage serves GET /console.
func (s *server) consolePage(c *gin.Context) { serveConsoleFile(c, "index.html") }

// consoleAsset serves GET /console/{asset}.
func (s *server) consoleAsset(c *gin.Context) { serveConsoleFile(c, c.Param("asset")) }

func serveConsoleFile(c *gin.Context, name string) {
	ctype, ok := consoleTypes[path.Ext(name)]
	var body []byte
	if ok {
		var err error
		// A name is one path segment (the router's :asset), so it cannot leave console/.
		body, err = consoleFiles.ReadFile("console/" + name)
		ok = err == nil
	}
	if !ok {
		writeProblem(c, specNotFound, "no such console asset")
		return
	}
	h := c.Writer.Header()
	h.Set("Content-Security-Policy", consoleCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// The assets change with the binary; revalidating keeps a page and its script in step.
	h.Set("Cache-Control", "no-cache")
	c.Data(http.StatusOK, ctype, body)
}
