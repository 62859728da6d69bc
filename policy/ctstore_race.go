//go:build race

package policy

import "sync/atomic"

// storeWord: see ctstore.go.
func storeWord(p *uint64, v uint64) { atomic.StoreUint64(p, v) }
