package store

import (
	"bytes"
	"compress/flate"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Messages are JSON with a one-byte type prefix. One change is one gossip
// message (endpoint, policy, lease, route record or keyring operation);
// the full state travels in memberlist's TCP push/pull. Package mesh adds
// its own membership message ('x', a leave); a new type byte must differ
// from it.
const (
	MsgEndpoint byte = 'e'
	MsgPolicy   byte = 'p'
	MsgLease    byte = 'l'
	MsgRoute    byte = 'r'
	MsgKeyring  byte = 'k'
	MsgFull     byte = 'S'
	MsgFullZ    byte = 'Z' // MsgFull's JSON, DEFLATE-compressed (ZipState)
	MsgPolSet   byte = 'P' // policy registers a peer may lack (anti-entropy), over TCP
	MsgPolSetZ  byte = 'Q' // MsgPolSet's JSON, DEFLATE-compressed
)

// MaxMsg bounds one gossip message; memberlist packs them into UDP packets
// of 1400 bytes.
const MaxMsg = 1024

// ZipAbove: memberlist refuses a push/pull state or a user message over
// 20 MiB. A full state above ZipAbove bytes travels compressed (a join's
// list of 20k signed rules is some 5 MB of JSON), and so does a policy
// batch. How far a message may expand, and how many entries it may hold,
// is below.
const ZipAbove = 64 << 10

// ZipState compresses a MsgFull message into a MsgFullZ one.
func ZipState(full []byte) []byte { return Zip(MsgFullZ, full) }

// Zip compresses the JSON of message msg into a message of type typ.
func Zip(typ byte, msg []byte) []byte {
	var b bytes.Buffer
	b.WriteByte(typ)
	w, _ := flate.NewWriter(&b, flate.BestSpeed) // a valid level: no error
	w.Write(msg[1:])                             // a bytes.Buffer does not fail
	w.Close()
	return b.Bytes()
}

// Encode is v as a message of type typ.
func Encode(typ byte, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs; cannot happen
	}
	return append([]byte{typ}, b...)
}

// EndpointMsg is the gossip message of e.
func EndpointMsg(e EndpointRec) Msg {
	return Msg{Name: "e/" + e.Owner + "/" + e.IP.String(), Body: Encode(MsgEndpoint, e)}
}

// PolicyMsg is the gossip message of p.
func PolicyMsg(p PolicyReg) Msg {
	return Msg{Name: "p/" + p.Rule.Key(), Body: Encode(MsgPolicy, p)}
}

// LeaseMsg is the gossip message of r.
func LeaseMsg(r LeaseRec) Msg {
	return Msg{Name: "l/" + r.Node, Body: Encode(MsgLease, r)}
}

// RouteMsg is the gossip message of e.
func RouteMsg(e RouteReg) Msg {
	return Msg{Name: "r/" + e.Route().key(), Body: Encode(MsgRoute, e)}
}

// FullState is the push/pull payload. From's own endpoints are
// authoritative: entries of From not listed and not newer than Seq are gone.
//
// Every state carries PolSum, the digest of the sender's policy set. Only
// a join's lists the policies too (PolList), and only up to a bound (see
// State). A cell whose own digest differs from the sender's sends the
// sender the registers of the differing buckets (MsgPolSet) unless both
// sides listed theirs; the sender, comparing the other way, does the same.
// At 100k rules the periodic push/pull is thus 2 KB of digest instead of
// 9 MB compressed (26 MB of JSON to build, compress, parse and merge on
// both sides), which kept idle agents busy. A state without PolSum comes
// from a cell of an earlier build and lists all its policies.
type FullState struct {
	From      string        `json:"f"`
	Seq       uint64        `json:"q"`
	Leases    []LeaseRec    `json:"l"`
	Endpoints []EndpointRec `json:"e"`
	Policies  []PolicyReg   `json:"p"`
	PolSum    []uint64      `json:"ps,omitempty"` // Digest
	PolList   bool          `json:"pl,omitempty"` // Policies lists them all (a join's, small set)
	Routes    []RouteReg    `json:"r,omitempty"`
	Keyring   []KeyringOp   `json:"k,omitempty"` // recent keyring operations
}

// Decoding what peers send. Anyone holding the cluster key can send any
// message, so every message is decoded as a stream (never the whole JSON
// in memory), entry by entry, each entry checked before it is kept, with a
// bound on the entries and on the bytes a message may expand to. The
// bounds are what the largest message a cell of this build sends needs
// (docs/control-plane.md, "Bounds on what a peer sends"): a 3 KB
// compressed batch of a million empty entries once made a cell allocate
// 700 MB.
const (
	// MaxBatchPolicies is the most registers a policy batch (MsgPolSet)
	// may carry: mesh.policyBatch's default, which senders never exceed.
	MaxBatchPolicies = 10_000
	// maxBatchJSON bounds a batch's JSON: MaxBatchPolicies registers of at
	// most MaxMsg bytes each (a policy change longer than a gossip message
	// is refused where it is made).
	maxBatchJSON = MaxBatchPolicies*MaxMsg + 2

	// The sections of a push/pull state (FullState). Policies are listed
	// only up to mesh.joinPolicyList (a join's, or a cell of an earlier build
	// with a small set); there is a lease per subnet at most, and the pool
	// has at most 65536; the last KeyringOpsKept keyring operations; one
	// digest. Endpoints and routes have no such limit: the bounds allow
	// 256k endpoints (1000 cells of 254 containers) and 64k routes.
	MaxStatePolicies  = 20_000
	maxStateEndpoints = 256 << 10
	maxStateLeases    = 64 << 10
	maxStateRoutes    = 64 << 10
	// MaxStateJSON bounds a push/pull state's JSON. memberlist refuses a
	// state over 20 MiB, and real states (signed rules, random container
	// ids) compress about 3 times (8.8 MB for 26 MB at 100k rules), so no
	// cell sends more than some 60 MB.
	MaxStateJSON = 64 << 20
)

// errTooLarge: a message expands past its bound.
var errTooLarge = errors.New("too large")

// boundedReader reads r and fails with errTooLarge once more than left
// bytes have come.
type boundedReader struct {
	r    io.Reader
	left int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1] // one byte more says whether there is more
	}
	n, err := b.r.Read(p)
	if b.left -= int64(n); b.left < 0 {
		return 0, errTooLarge
	}
	return n, err
}

// compactReader passes r on without the whitespace outside JSON strings.
// json.Decoder keeps whitespace between values in its buffer until the
// next value starts, and scans it again at every refill: 64 MB of spaces
// made it allocate 270 MB over four minutes. json.Marshal writes none.
type compactReader struct {
	r          io.Reader
	inStr, esc bool
}

func (c *compactReader) Read(p []byte) (int, error) {
	for {
		n, err := c.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			switch {
			case c.esc:
				c.esc = false
			case c.inStr:
				c.esc, c.inStr = b == '\\', b != '"'
			case b == '"':
				c.inStr = true
			case b == ' ' || b == '\t' || b == '\n' || b == '\r':
				continue
			}
			p[j] = b
			j++
		}
		if j > 0 || n == 0 || err != nil {
			return j, err
		}
	}
}

// msgBody returns a reader of the JSON of message buf (a type byte and
// JSON, or for MsgFullZ and MsgPolSetZ DEFLATE-compressed JSON), failing
// past limit bytes. borrowed: the reader reads buf.
func msgBody(buf []byte, limit int64) io.Reader {
	var r io.Reader = bytes.NewReader(buf[1:])
	if buf[0] == MsgFullZ || buf[0] == MsgPolSetZ {
		r = flate.NewReader(r)
	}
	return &compactReader{r: &boundedReader{r: r, left: limit}}
}

// DecodePolicyBatch decodes a MsgPolSet or MsgPolSetZ message. Entries
// that are not well formed (WellFormed) are left out; each is passed to
// bad. A message of more than MaxBatchPolicies entries, more than
// maxBatchJSON bytes of JSON or of invalid JSON is an error.
func DecodePolicyBatch(buf []byte, bad func(PolicyReg, error)) ([]PolicyReg, error) {
	dec := json.NewDecoder(msgBody(buf, maxBatchJSON))
	ps, err := decodeList(dec, "policy", MaxBatchPolicies, (*PolicyReg).WellFormed, bad)
	if err == nil {
		err = atEOF(dec)
	}
	return ps, err
}

// Rejects receives the entries of a push/pull state that are left
// out as not well formed.
type Rejects struct {
	Policy   func(PolicyReg, error)
	Endpoint func(EndpointRec, error)
	Route    func(RouteReg, error)
	Keyring  func(KeyringOp, error)
}

// DecodeFullState decodes a MsgFull or MsgFullZ message. Entries that are
// not well formed are left out and passed to rej; a section longer than
// its bound, a state of more than MaxStateJSON bytes of JSON, or invalid
// JSON is an error.
func DecodeFullState(buf []byte, rej Rejects) (FullState, error) {
	var fs FullState
	dec := json.NewDecoder(msgBody(buf, MaxStateJSON))
	if err := expectDelim(dec, '{'); err != nil {
		return fs, err
	}
	seen := make(map[string]bool)
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fs, err
		}
		key, _ := t.(string)
		if seen[key] {
			return fs, fmt.Errorf("field %q twice", key)
		}
		seen[key] = true
		switch key {
		case "f":
			if err = dec.Decode(&fs.From); err == nil && len(fs.From) > MaxNameLen {
				err = fmt.Errorf("sender name of %d bytes", len(fs.From))
			}
		case "q":
			err = dec.Decode(&fs.Seq)
		case "pl":
			err = dec.Decode(&fs.PolList)
		case "ps":
			fs.PolSum, err = decodeList[uint64](dec, "digest bucket", DigestBuckets, nil, nil)
		case "l":
			fs.Leases, err = decodeList(dec, "lease", maxStateLeases, (*LeaseRec).WellFormed, nil)
		case "e":
			fs.Endpoints, err = decodeList(dec, "endpoint", maxStateEndpoints, (*EndpointRec).WellFormed, rej.Endpoint)
		case "p":
			fs.Policies, err = decodeList(dec, "policy", MaxStatePolicies, (*PolicyReg).WellFormed, rej.Policy)
		case "r":
			fs.Routes, err = decodeList(dec, "route", maxStateRoutes, (*RouteReg).WellFormed, rej.Route)
		case "k":
			fs.Keyring, err = decodeList(dec, "keyring operation", KeyringOpsKept, (*KeyringOp).WellFormed, rej.Keyring)
		default: // a field of a later build
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return fs, err
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return fs, err
	}
	return fs, atEOF(dec)
}

// decodeList decodes a JSON list (or null) of at most max entries, one
// entry at a time. An entry that check refuses is not kept: bad, if not
// nil, is told. Entries left out count towards max.
func decodeList[T any](dec *json.Decoder, what string, max int, check func(*T) error, bad func(T, error)) ([]T, error) {
	t, err := dec.Token()
	switch {
	case err != nil:
		return nil, err
	case t == nil:
		return nil, nil
	case t != json.Delim('['):
		return nil, fmt.Errorf("%s list: not a list", what)
	}
	var (
		out []T
		v   T // one, not one on the heap per entry
	)
	for n := 1; dec.More(); n++ {
		if n > max {
			return nil, fmt.Errorf("more than %d %s entries", max, what)
		}
		v = *new(T)
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s entry %d: %w", what, n, err)
		}
		if check != nil {
			if err := check(&v); err != nil {
				if bad != nil {
					bad(v, err)
				}
				continue
			}
		}
		out = append(out, v)
	}
	return out, expectDelim(dec, ']')
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	t, err := dec.Token()
	if err == nil && t != d {
		err = fmt.Errorf("want %q, have %v", d, t)
	}
	return err
}

// atEOF checks that nothing follows the message's value.
func atEOF(dec *json.Decoder) error {
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the message")
		}
		return err
	}
	return nil
}

// Reasons an entry is not well formed.
var (
	errNoOrigin = errors.New("no origin of 1-253 bytes")
	errSigShape = errors.New("not signed (no ed25519 signer and signature)")
)

// WellFormed checks what every cell checks before it stores a policy
// register (the signature itself is verified only when the register would
// win).
func (p *PolicyReg) WellFormed() error {
	switch {
	case p.Origin == "" || len(p.Origin) > MaxNameLen:
		return errNoOrigin
	case len(p.Signer) != ed25519.PublicKeySize || len(p.Sig) != ed25519.SignatureSize:
		return errSigShape
	}
	return p.Rule.Validate(netip.Prefix{}) // the overlay is checked where a change enters (CheckPolicyChange)
}

// WellFormed checks a route register as WellFormed of PolicyReg does.
func (e *RouteReg) WellFormed() error {
	switch {
	case e.Origin == "" || len(e.Origin) > MaxNameLen:
		return errNoOrigin
	case len(e.Signer) != ed25519.PublicKeySize || len(e.Sig) != ed25519.SignatureSize:
		return errSigShape
	}
	return e.Route().Validate()
}

// WellFormed checks a keyring operation's shape and signature fields.
func (op *KeyringOp) WellFormed() error {
	if len(op.Signer) != ed25519.PublicKeySize || len(op.Sig) != ed25519.SignatureSize {
		return errSigShape
	}
	return op.Validate()
}

// WellFormed checks an endpoint record's shape.
func (e *EndpointRec) WellFormed() error {
	switch {
	case e.Owner == "" || len(e.Owner) > MaxNameLen:
		return errors.New("no owner of 1-253 bytes")
	case !e.IP.IsValid():
		return errors.New("no IP")
	case len(e.App) > MaxNameLen || len(e.Name) > MaxNameLen:
		return errors.New("app or name longer than 253 bytes")
	case !e.Deleted && e.App == "":
		return errors.New("live endpoint without an app")
	}
	return nil
}

// WellFormed checks a lease record's shape; whether its subnet fits this
// cell's overlay is the merge's business.
func (r *LeaseRec) WellFormed() error {
	switch {
	case r.Node == "" || len(r.Node) > MaxNameLen:
		return errors.New("no node name of 1-253 bytes")
	case !r.Subnet.IsValid():
		return errors.New("no subnet")
	}
	return nil
}
