//go:build !race && (amd64 || 386)

package policy

// storeWord writes a conntrack word under the shard lock. Lock-free
// readers load words atomically and validate what they read with the
// shard's sequence counter, or, for a slot being filled, with its control
// byte and meta word, which are stored last. On x86 a plain store is
// enough: an aligned word never tears, stores become visible in program
// order (TSO), and the compiler keeps their order. Other architectures
// (arm64 may make stores visible out of order) and race builds use an
// atomic store (ctstore_atomic.go).
func storeWord(p *uint64, v uint64) { *p = v }
