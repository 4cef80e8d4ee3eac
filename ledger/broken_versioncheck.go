//go:build tally_broken_versioncheck

package ledger

import "strings"

// A deliberately broken build for the chaos tests (cmd/tally TestChaosCatchesBrokenBuild),
// never for use: `go build -tags tally_broken_versioncheck` compiles a commit script without
// the version check (the fencing token) and with stream IDs chosen by Redis instead of
// derived from the version, so that concurrent writers of one account lose each other's
// updates. Production code is untouched: this rewrites the embedded script's source before
// any Ledger is opened (ledger.Open compiles commitLua), hence an init — the one place a
// build tag can change behaviour without a hook in the code.
//
// It panics when commit.lua no longer contains what it cuts, so the chaos test can never
// run this build against an unbroken script and pass by accident.
func init() {
	for _, cut := range [][2]string{
		{"  if cur ~= acc.expected and not skip[acc.slice] then\n", "  if false then\n"},
		{"redis.call('XADD', acc.events, version .. '-0',", "redis.call('XADD', acc.events, '*',"},
	} {
		if !strings.Contains(commitLua, cut[0]) {
			panic("tally_broken_versioncheck: commit.lua changed; update ledger/broken_versioncheck.go")
		}
		commitLua = strings.Replace(commitLua, cut[0], cut[1], 1)
	}
}
