//go:build !race

package policy

// storeWord writes a conntrack word under the shard lock. Lock-free
// readers load words atomically and validate what they read with the
// shard's sequence counter (or, for a slot being filled, with its meta
// word, which is always stored atomically and last), so a plain store is
// enough; on amd64 and arm64 an aligned word never tears. Race builds use
// an atomic store instead, so that the detector checks everything else.
func storeWord(p *uint64, v uint64) { *p = v }
