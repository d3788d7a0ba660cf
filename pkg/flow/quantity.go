package flow

import (
	"fmt"
	"math/big"
	"regexp"
	"strconv"
)

var quantityRE = regexp.MustCompile(`^([0-9]+)(?:\.([0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$`)

var quantityMultipliers = map[string]int64{
	"":   1,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
	"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}

// ParseQuantity parses a Kubernetes-style byte quantity: a decimal number with an optional
// binary (Ki, Mi, Gi, Ti, Pi, Ei) or decimal (k or K, M, G, T, P, E) suffix, e.g. "512Mi",
// "2Gi", "1.5G" or "1048576". Fractions round up to a whole byte. The result is positive and
// fits an int64.
func ParseQuantity(s string) (int64, error) {
	m := quantityRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("invalid quantity %q", s)
	}
	v, ok := new(big.Rat).SetString(m[1] + "." + m[2] + "0")
	if !ok {
		return 0, fmt.Errorf("invalid quantity %q", s)
	}
	v.Mul(v, new(big.Rat).SetInt64(quantityMultipliers[m[3]]))
	// Round up: a limit of 1.5 bytes still needs two.
	n := new(big.Int).Quo(v.Num(), v.Denom())
	if new(big.Rat).SetInt(n).Cmp(v) < 0 {
		n.Add(n, big.NewInt(1))
	}
	if n.Sign() <= 0 {
		return 0, fmt.Errorf("quantity %q is not positive", s)
	}
	if !n.IsInt64() {
		return 0, fmt.Errorf("quantity %q is too large", s)
	}
	return n.Int64(), nil
}

// FormatQuantity writes n bytes the way flows write quantities: the largest binary unit
// that divides it exactly (2Gi, 512Mi, 100Ki), else plain bytes.
func FormatQuantity(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
