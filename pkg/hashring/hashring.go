// Package hashring owns the consistent-hash ring that agentserver uses for
// optional request locality: requests for the same assistant or thread go to
// the same gateway while the set of gateways is stable, and when one leaves
// only the keys it owned move (each to the next node clockwise).
//
// The ring is a pure, immutable value built from node names (for gateways, the
// "host:port" they are dialled at). Its hash is fixed and seedless, so every
// client process that builds a ring from the same names places every key on the
// same node. It must never do I/O, know about gRPC or Consul, or keep state
// between builds: callers rebuild it when their node set changes.
package hashring

import (
	"iter"
	"slices"
	"strconv"
)

// DefaultVirtualNodes is the number of points each node gets on the ring when
// New is given zero. With 160 points per node (the figure ketama and NGINX's
// "hash … consistent" use) each of three nodes typically owns within about ten
// percent of an even third of the keys.
const DefaultVirtualNodes = 160

// Ring is an immutable consistent-hash ring with virtual nodes. The zero value
// is an empty ring. A Ring is safe for concurrent use.
type Ring struct {
	nodes  []string // distinct node names, sorted
	points []point  // sorted by hash, then node index
}

type point struct {
	hash uint64
	node int // index into nodes
}

// New builds a ring over nodes, giving each node virtualNodes points (or
// DefaultVirtualNodes when virtualNodes <= 0). Duplicate and empty names are
// ignored; the order of nodes does not matter.
func New(nodes []string, virtualNodes int) *Ring {
	if virtualNodes <= 0 {
		virtualNodes = DefaultVirtualNodes
	}
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if n != "" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)

	r := &Ring{nodes: names, points: make([]point, 0, len(names)*virtualNodes)}
	buf := make([]byte, 0, 64)
	for i, name := range names {
		for v := range virtualNodes {
			buf = append(buf[:0], name...)
			buf = append(buf, '#')
			buf = strconv.AppendInt(buf, int64(v), 10)
			r.points = append(r.points, point{hash: hash(buf), node: i})
		}
	}
	// Ties between two nodes' points are broken by node name, so the ring does
	// not depend on the order the caller listed the nodes in.
	slices.SortFunc(r.points, func(a, b point) int {
		if a.hash != b.hash {
			if a.hash < b.hash {
				return -1
			}
			return 1
		}
		return a.node - b.node
	})
	return r
}

// Len reports the number of distinct nodes on the ring.
func (r *Ring) Len() int { return len(r.nodes) }

// Nodes returns the ring's distinct node names in sorted order. The caller may
// modify the returned slice.
func (r *Ring) Nodes() []string { return slices.Clone(r.nodes) }

// Owner returns the node that owns key: the node of the first point clockwise
// from the key's hash. It reports false only when the ring is empty.
func (r *Ring) Owner(key string) (string, bool) {
	if len(r.points) == 0 {
		return "", false
	}
	return r.nodes[r.points[r.search(key)].node], true
}

// Walk yields the distinct nodes in ring order starting at key's owner: the
// owner first, then each node in the order a key would fail over to it when
// the nodes before it are unavailable. Every node is yielded exactly once.
func (r *Ring) Walk(key string) iter.Seq[string] {
	return func(yield func(string) bool) {
		if len(r.points) == 0 {
			return
		}
		start := r.search(key)
		first := r.points[start].node
		if !yield(r.nodes[first]) || len(r.nodes) == 1 {
			return
		}
		// Only allocate once the caller has asked for more than the owner,
		// which is the rare failover path.
		seen := make([]bool, len(r.nodes))
		seen[first] = true
		left := len(r.nodes) - 1
		for i := 1; i < len(r.points) && left > 0; i++ {
			n := r.points[(start+i)%len(r.points)].node
			if seen[n] {
				continue
			}
			seen[n] = true
			left--
			if !yield(r.nodes[n]) {
				return
			}
		}
	}
}

// search returns the index of the first point whose hash is >= the key's
// hash, wrapping to 0 past the end of the ring.
func (r *Ring) search(key string) int {
	h := hash(key)
	i, _ := slices.BinarySearchFunc(r.points, h, func(p point, h uint64) int {
		switch {
		case p.hash < h:
			return -1
		case p.hash > h:
			return 1
		}
		return 0
	})
	if i == len(r.points) {
		return 0
	}
	return i
}

// hash is 64-bit FNV-1a followed by the MurmurHash3 finaliser. FNV alone
// spreads short, similar strings ("10.0.0.1:8080#17") poorly; the finaliser
// gives full avalanche. It is deliberately seedless so that every process
// agrees on where a key lives, and written out so that hashing a key on the
// pick path does not allocate.
func hash[T string | []byte](b T) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	x := uint64(offset64)
	for i := range len(b) {
		x ^= uint64(b[i])
		x *= prime64
	}
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
