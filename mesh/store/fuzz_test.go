package store

import (
	"net/netip"
	"testing"
)

// FuzzMergeState: whatever a push/pull state holds, decoding it and
// merging its endpoints, policies and routes into a Store does not panic
// and stores nothing that is not well formed and, if signed, verified
// (Check). mesh's fuzz targets do the same through its memberlist
// delegate, leases and keyring included. Run with `go test -run '^$'
// -fuzz FuzzMergeState -fuzztime 20s -fuzzminimizetime 2s ./mesh/store/`.
func FuzzMergeState(f *testing.F) {
	js := Encode(MsgFull, seedState())
	f.Add(js[1:], false)
	f.Add(Zip(MsgFullZ, js)[1:], true)
	none := func(string) (netip.Prefix, bool) { return netip.Prefix{}, false }
	f.Fuzz(func(t *testing.T, body []byte, z bool) {
		msg := append([]byte{MsgFull}, body...)
		if z {
			msg[0] = MsgFullZ
		}
		fs, err := DecodeFullState(msg, Rejects{})
		if err != nil {
			return
		}
		s := newTestStore("cell-a")
		var res Result
		for _, e := range fs.Endpoints {
			s.MergeEndpoint(e, false, &res, none)
		}
		s.MergePolicies(fs.Policies, &res)
		for _, e := range fs.Routes {
			s.MergeRoute(e, false, &res)
		}
		if err := s.Check(func(netip.Prefix) bool { return true }); err != nil {
			t.Fatalf("stored %v", err)
		}
	})
}
