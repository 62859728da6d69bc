package mesh

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

// Decoding what peers send. Anyone holding the cluster key can send any
// message, so every message is decoded as a stream (never the whole JSON
// in memory), entry by entry, each entry checked before it is kept, with a
// bound on the entries and on the bytes a message may expand to. The
// bounds are what the largest message a cell of this build sends needs
// (docs/control-plane.md, "Bounds on what a peer sends"): a 3 KB
// compressed batch of a million empty entries once made a cell allocate
// 700 MB.
const (
	// maxBatchPolicies is the most registers a policy batch (msgPolSet)
	// may carry: policyBatch's default, which senders never exceed.
	maxBatchPolicies = 10_000
	// maxBatchJSON bounds a batch's JSON: maxBatchPolicies registers of at
	// most maxMsg bytes each (a policy change longer than a gossip message
	// is refused where it is made).
	maxBatchJSON = maxBatchPolicies*maxMsg + 2

	// The sections of a push/pull state (fullState). Policies are listed
	// only up to joinPolicyList (a join's, or a cell of an earlier build
	// with a small set); there is a lease per subnet at most, and the pool
	// has at most 65536; the last keyringOpsKept keyring operations; one
	// digest. Endpoints and routes have no such limit: the bounds allow
	// 256k endpoints (1000 cells of 254 containers) and 64k routes.
	maxStatePolicies  = 20_000
	maxStateEndpoints = 256 << 10
	maxStateLeases    = 64 << 10
	maxStateRoutes    = 64 << 10
	// maxStateJSON bounds a push/pull state's JSON. memberlist refuses a
	// state over 20 MiB, and real states (signed rules, random container
	// ids) compress about 3 times (8.8 MB for 26 MB at 100k rules), so no
	// cell sends more than some 60 MB.
	maxStateJSON = 64 << 20
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
// JSON, or for msgFullZ and msgPolSetZ DEFLATE-compressed JSON), failing
// past limit bytes. borrowed: the reader reads buf.
func msgBody(buf []byte, limit int64) io.Reader {
	var r io.Reader = bytes.NewReader(buf[1:])
	if buf[0] == msgFullZ || buf[0] == msgPolSetZ {
		r = flate.NewReader(r)
	}
	return &compactReader{r: &boundedReader{r: r, left: limit}}
}

// decodePolicyBatch decodes a msgPolSet or msgPolSetZ message. Entries
// that are not well formed (wellFormed) are left out; each is passed to
// bad. A message of more than maxBatchPolicies entries, more than
// maxBatchJSON bytes of JSON or of invalid JSON is an error.
func decodePolicyBatch(buf []byte, bad func(polEntry, error)) ([]polEntry, error) {
	dec := json.NewDecoder(msgBody(buf, maxBatchJSON))
	ps, err := decodeList(dec, "policy", maxBatchPolicies, (*polEntry).wellFormed, bad)
	if err == nil {
		err = atEOF(dec)
	}
	return ps, err
}

// stateRejects receives the entries of a push/pull state that are left
// out as not well formed.
type stateRejects struct {
	policy   func(polEntry, error)
	endpoint func(epEntry, error)
	route    func(routeEntry, error)
	keyring  func(KeyringOp, error)
}

// decodeFullState decodes a msgFull or msgFullZ message. Entries that are
// not well formed are left out and passed to rej; a section longer than
// its bound, a state of more than maxStateJSON bytes of JSON, or invalid
// JSON is an error.
func decodeFullState(buf []byte, rej stateRejects) (fullState, error) {
	var fs fullState
	dec := json.NewDecoder(msgBody(buf, maxStateJSON))
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
			if err = dec.Decode(&fs.From); err == nil && len(fs.From) > maxNameLen {
				err = fmt.Errorf("sender name of %d bytes", len(fs.From))
			}
		case "q":
			err = dec.Decode(&fs.Seq)
		case "pl":
			err = dec.Decode(&fs.PolList)
		case "ps":
			fs.PolSum, err = decodeList[uint64](dec, "digest bucket", polBuckets, nil, nil)
		case "l":
			fs.Leases, err = decodeList(dec, "lease", maxStateLeases, (*leaseRec).wellFormed, nil)
		case "e":
			fs.Endpoints, err = decodeList(dec, "endpoint", maxStateEndpoints, (*epEntry).wellFormed, rej.endpoint)
		case "p":
			fs.Policies, err = decodeList(dec, "policy", maxStatePolicies, (*polEntry).wellFormed, rej.policy)
		case "r":
			fs.Routes, err = decodeList(dec, "route", maxStateRoutes, (*routeEntry).wellFormed, rej.route)
		case "k":
			fs.Keyring, err = decodeList(dec, "keyring operation", keyringOpsKept, (*KeyringOp).wellFormed, rej.keyring)
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

// wellFormed checks what every cell checks before it stores a policy
// register (the signature itself is verified only when the register would
// win).
func (p *polEntry) wellFormed() error {
	switch {
	case p.Origin == "" || len(p.Origin) > maxNameLen:
		return errNoOrigin
	case len(p.Signer) != ed25519.PublicKeySize || len(p.Sig) != ed25519.SignatureSize:
		return errSigShape
	}
	return p.Rule.validate(netip.Prefix{}) // the overlay is checked where a change enters (checkPolicyChange)
}

func (e *routeEntry) wellFormed() error {
	switch {
	case e.Origin == "" || len(e.Origin) > maxNameLen:
		return errNoOrigin
	case len(e.Signer) != ed25519.PublicKeySize || len(e.Sig) != ed25519.SignatureSize:
		return errSigShape
	}
	return e.route().Validate()
}

func (op *KeyringOp) wellFormed() error {
	if len(op.Signer) != ed25519.PublicKeySize || len(op.Sig) != ed25519.SignatureSize {
		return errSigShape
	}
	return op.validate()
}

func (e *epEntry) wellFormed() error {
	switch {
	case e.Owner == "" || len(e.Owner) > maxNameLen:
		return errors.New("no owner of 1-253 bytes")
	case !e.IP.IsValid():
		return errors.New("no IP")
	case len(e.App) > maxNameLen || len(e.Name) > maxNameLen:
		return errors.New("app or name longer than 253 bytes")
	case !e.Deleted && e.App == "":
		return errors.New("live endpoint without an app")
	}
	return nil
}

// wellFormed checks a lease record's shape; whether its subnet fits this
// cell's overlay is the merge's business.
func (r *leaseRec) wellFormed() error {
	switch {
	case r.Node == "" || len(r.Node) > maxNameLen:
		return errors.New("no node name of 1-253 bytes")
	case !r.Subnet.IsValid():
		return errors.New("no subnet")
	}
	return nil
}
