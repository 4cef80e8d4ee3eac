package bench

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Kind is one kind of operation of the load.
type Kind int

// The kinds of operations a Mix weighs.
const (
	Deposit    Kind = iota // deposit 1..100 into a random account
	Withdrawal             // withdraw 1..100 from a random account
	Transfer               // move 1..100 between two random accounts
	Hold                   // place a hold of 1..100, then capture it (half the time) or void it
	numKinds
)

// String returns the kind's name as --mix spells it.
func (k Kind) String() string {
	switch k {
	case Deposit:
		return "deposit"
	case Withdrawal:
		return "withdrawal"
	case Transfer:
		return "transfer"
	case Hold:
		return "hold"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Mix weighs the kinds of operations: an operation is of kind k with probability
// Weights[k] / Σ Weights.
type Mix struct {
	Weights [numKinds]int
}

// DefaultMix is deposits and one withdrawal in ten, the load of the earlier mode tables.
func DefaultMix() Mix { return Mix{Weights: [numKinds]int{Deposit: 90, Withdrawal: 10}} }

// ParseMix parses "deposit=70,withdrawal=10,transfer=15,hold=5": comma-separated
// kind=weight pairs with non-negative integer weights; kinds left out weigh 0. It returns
// an error for an unknown kind, a repeated kind, a bad weight or weights that add up to 0.
func ParseMix(s string) (Mix, error) {
	var m Mix
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, ok := strings.Cut(part, "=")
		name = strings.TrimSpace(name)
		if !ok {
			return Mix{}, fmt.Errorf("mix: %q is not kind=weight", part)
		}
		k := Kind(-1)
		for i := range numKinds {
			if i.String() == name {
				k = i
			}
		}
		if k < 0 {
			return Mix{}, fmt.Errorf("mix: unknown kind %q (deposit, withdrawal, transfer, hold)", name)
		}
		if seen[name] {
			return Mix{}, fmt.Errorf("mix: %s given twice", name)
		}
		seen[name] = true
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 0 {
			return Mix{}, fmt.Errorf("mix: weight of %s must be a non-negative integer, got %q", name, w)
		}
		m.Weights[k] = n
	}
	if m.total() == 0 {
		return Mix{}, fmt.Errorf("mix: %q weighs no operation", s)
	}
	return m, nil
}

func (m Mix) total() int {
	n := 0
	for _, w := range m.Weights {
		n += w
	}
	return n
}

// String returns the mix as ParseMix reads it, kinds of weight 0 left out.
func (m Mix) String() string {
	var parts []string
	for k, w := range m.Weights {
		if w > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", Kind(k), w))
		}
	}
	return strings.Join(parts, ",")
}

// without returns the mix with kind k weighing 0 (transfers need two accounts).
func (m Mix) without(k Kind) Mix {
	m.Weights[k] = 0
	return m
}

// pick draws a kind. The mix must weigh at least one kind.
func (m Mix) pick(rng *rand.Rand) Kind {
	n := rng.IntN(m.total())
	for k, w := range m.Weights {
		if n < w {
			return Kind(k)
		}
		n -= w
	}
	return Deposit // unreachable for a valid mix
}
