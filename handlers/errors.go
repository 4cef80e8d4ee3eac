package handlers

// ProblemCode returns the HTTP status and problem code the API answers err with, from its
// one error→HTTP table (errorTable: the first row whose error err wraps). known is false
// for an error the table does not map, which the API answers 500 "internal" (returned
// here) — or, for a context.Canceled of a client that went away, not at all.
//
// It is for callers that name ledger errors the way the API does (package bench) without
// copying the table.
func ProblemCode(err error) (status int, code string, known bool) {
	if spec, ok := lookup(err); ok {
		return spec.status, spec.code, true
	}
	return specInternal.status, specInternal.code, false
}
