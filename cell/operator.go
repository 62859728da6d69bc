package cell

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/cellapi"
	"github.com/weft-net/weft/mesh/store"
	"github.com/weft-net/weft/policy"
)

// Operator authority. An operator's ed25519 key signs every policy change
// and every cluster keyring operation; cells accept only what a key in
// their operators.pub signed (see docs/security.md).
const (
	OperatorKeyFile  = "operator.key"  // base64 ed25519 seed (or full private key), 0600; only where an operator may sign
	OperatorsPubFile = "operators.pub" // trusted operator public keys, one base64 a line, 0644
)

// OperatorInit describes what InitOperators did.
type OperatorInit struct {
	KeyNew      bool     // operator.key was created
	HasKey      bool     // operator.key exists (new or kept)
	Trusted     []string // fingerprints of the trusted keys
	TrustedFrom []string // files whose keys were added to operators.pub
}

// InitOperators sets up the operator keys of stateDir (after Init):
//   - operatorPubFile names keys to trust: they are added to operators.pub
//     and no private key is made;
//   - clusterKeyFile's directory's operators.pub, when present, is added
//     too (the cluster this cell joins), and no private key is made;
//   - otherwise (the first cell of a new cluster) operator.key is made and
//     its public key trusted.
//
// Existing files are kept; keys are only ever added to operators.pub.
func InitOperators(stateDir, clusterKeyFile, operatorPubFile string) (*OperatorInit, error) {
	res := &OperatorInit{}
	pubPath := filepath.Join(stateDir, OperatorsPubFile)
	trusted, err := ReadTrustedOperators(pubPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var add []ed25519.PublicKey
	if operatorPubFile != "" {
		ks, err := ReadTrustedOperators(operatorPubFile)
		if err != nil {
			return nil, fmt.Errorf("--operator-pub: %w", err)
		}
		add = append(add, ks...)
		res.TrustedFrom = append(res.TrustedFrom, operatorPubFile)
	}
	if clusterKeyFile != "" {
		from := filepath.Join(filepath.Dir(clusterKeyFile), OperatorsPubFile)
		if abs1, _ := filepath.Abs(from); abs1 != mustAbs(pubPath) {
			ks, err := ReadTrustedOperators(from)
			switch {
			case err == nil:
				add = append(add, ks...)
				res.TrustedFrom = append(res.TrustedFrom, from)
			case !errors.Is(err, fs.ErrNotExist):
				return nil, err
			}
		}
	}
	keyPath := filepath.Join(stateDir, OperatorKeyFile)
	priv, err := ReadOperatorKey(keyPath)
	switch {
	case err == nil:
		res.HasKey = true
		add = append(add, priv.Public().(ed25519.PublicKey))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	case operatorPubFile == "" && clusterKeyFile == "":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		if err := writeSecret(keyPath, []byte(base64.StdEncoding.EncodeToString(priv.Seed())+"\n")); err != nil {
			return nil, err
		}
		res.KeyNew, res.HasKey = true, true
		add = append(add, priv.Public().(ed25519.PublicKey))
	}
	changed := false
	for _, k := range add {
		if !slices.ContainsFunc(trusted, func(t ed25519.PublicKey) bool { return t.Equal(k) }) {
			trusted = append(trusted, k)
			changed = true
		}
	}
	if _, err := os.Stat(pubPath); changed || errors.Is(err, fs.ErrNotExist) {
		if err := writeTrusted(pubPath, trusted); err != nil {
			return nil, err
		}
	}
	for _, k := range trusted {
		res.Trusted = append(res.Trusted, store.Fingerprint(k))
	}
	return res, nil
}

func mustAbs(p string) string {
	a, _ := filepath.Abs(p)
	return a
}

// writeTrusted writes keys to path, or NoOperatorsLine if there are none.
func writeTrusted(path string, keys []ed25519.PublicKey) error {
	var b bytes.Buffer
	if len(keys) == 0 {
		fmt.Fprintf(&b, "%s: this cell refuses every policy change.\n# Add operator public keys (base64, one a line) and restart the agent.\n", NoOperatorsLine)
	}
	for _, k := range keys {
		fmt.Fprintln(&b, base64.StdEncoding.EncodeToString(k))
	}
	if err := writeSecret(path, b.Bytes()); err != nil {
		return err
	}
	return os.Chmod(path, 0o644) // public keys
}

// ReadOperatorKey reads an operator private key: base64 of the 32-byte
// seed or of the 64-byte private key.
func ReadOperatorKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: not an operator key (base64 ed25519): %w", path, err)
	case len(k) == ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(k), nil
	case len(k) == ed25519.PrivateKeySize:
		return ed25519.PrivateKey(k), nil
	}
	return nil, fmt.Errorf("%s: an operator key is a base64 32-byte ed25519 seed, this one has %d bytes", path, len(k))
}

// ReadTrustedOperators reads public keys, one base64 a line; blank lines
// and lines starting with '#' are skipped.
func ReadTrustedOperators(path string) ([]ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []ed25519.PublicKey
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%s:%d: not a base64 ed25519 public key", path, n)
		}
		out = append(out, ed25519.PublicKey(k))
	}
	return out, sc.Err()
}

// NoOperatorsLine, at the start of a line of operators.pub, says that the cell trusts no
// operator key on purpose (it then refuses every policy change). weft init
// writes it when it is given no key to trust.
const NoOperatorsLine = "# no trusted operator keys"

// LoadOperators reads stateDir's operator key (nil if the cell holds none)
// and trusted keys. operators.pub must exist and list a key, or say
// NoOperatorsLine: a missing, empty or damaged file is an error, because
// the agent would otherwise refuse every policy change, its persisted
// ones included.
func LoadOperators(stateDir string) (ed25519.PrivateKey, []ed25519.PublicKey, error) {
	priv, err := ReadOperatorKey(filepath.Join(stateDir, OperatorKeyFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	path := filepath.Join(stateDir, OperatorsPubFile)
	const fix = "the agent verifies every policy change against the operator keys it lists; " +
		"restore it, or run `weft init --state-dir %s --operator-pub FILE`"
	trusted, err := ReadTrustedOperators(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("%s is missing: "+fix, path, stateDir)
	case err != nil:
		return nil, nil, fmt.Errorf("%w: "+fix, err, stateDir)
	case len(trusted) == 0 && !saysNoOperators(path):
		return nil, nil, fmt.Errorf("%s lists no operator key (a file that trusts none on purpose says %q): "+fix,
			path, NoOperatorsLine, stateDir)
	}
	return priv, trusted, nil
}

// saysNoOperators reports whether the file at path has NoOperatorsLine.
func saysNoOperators(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && slices.ContainsFunc(strings.Split(string(b), "\n"), func(l string) bool {
		return strings.HasPrefix(strings.TrimSpace(l), NoOperatorsLine)
	})
}

// SignPolicyChange makes a change of r signed by priv, stamped with the
// wall clock (or just above minStamp).
func SignPolicyChange(r policy.Rule, present bool, origin string, minStamp uint64, priv ed25519.PrivateKey) cellapi.SignedPolicyChange {
	c := store.PolicyChange{Rule: r, Present: present, Stamp: max(uint64(time.Now().UnixNano()), minStamp+1), Origin: origin}
	store.SignPolicyChange(&c, priv)
	return cellapi.SignedPolicyChange{Rule: cellapi.FromRule(r), Present: present, Stamp: c.Stamp, Origin: origin, Signer: c.Signer, Sig: c.Sig}
}

// registerOperatorRoutes adds the operator endpoints:
//
//	POST /v1/policy-changes  PolicyChangesRequest -> PolicyChangesResponse
//	GET  /v1/egress-rules    -> EgressRuleList (egress.go)
//	GET  /v1/ingress-rules   -> IngressRuleList (ingress.go)
//	GET  /v1/cluster-keys    -> KeyringStatus
//	POST /v1/cluster-keys    KeyringRequest -> KeyringStatus
func (a *Agent) registerOperatorRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/policy-changes", a.handlePolicyChanges)
	mux.HandleFunc("GET /v1/egress-rules", a.handleListEgressRules)
	mux.HandleFunc("GET /v1/ingress-rules", a.handleListIngressRules)
	mux.HandleFunc("GET /v1/cluster-keys", a.handleListClusterKeys)
	mux.HandleFunc("POST /v1/cluster-keys", a.handleClusterKeyOp)
}

// maxPolicyChangesBody bounds a POST /v1/policy-changes body: room for
// some 40k signed changes (a change is about 350 bytes of JSON).
const maxPolicyChangesBody = 16 << 20

func (a *Agent) handlePolicyChanges(w http.ResponseWriter, r *http.Request) {
	var req cellapi.PolicyChangesRequest
	if !readJSONLimit(w, r, &req, maxPolicyChangesBody) {
		return
	}
	res := cellapi.PolicyChangesResponse{Results: make([]cellapi.PolicyChangeResult, len(req.Changes))}
	// The valid changes go to the mesh in one batch: it applies them under
	// one lock and writes state.json once for all of them.
	var cs, unsigned []store.PolicyChange
	var at, unsignedAt []int // index in req.Changes of each of cs, unsigned
	for i, c := range req.Changes {
		mc := store.PolicyChange{Present: c.Present, Stamp: c.Stamp, Origin: c.Origin, Signer: c.Signer, Sig: c.Sig}
		var err error
		switch {
		case c.Egress != nil && c.Ingress != nil:
			err = errors.New("a change names an egress rule or an ingress rule, not both")
		case c.Ingress != nil:
			mc.Ingress, err = c.Ingress.Rule(a.cfg.OverlayCIDR)
		case c.Egress != nil:
			mc.Egress, err = c.Egress.Rule(a.cfg.OverlayCIDR)
		default:
			mc.Rule, err = c.Rule.Rule()
		}
		if err != nil {
			res.Results[i] = cellapi.PolicyChangeResult{Code: http.StatusBadRequest, Error: err.Error()}
			continue
		}
		if len(c.Sig) == 0 && len(c.Signer) == 0 {
			unsigned, unsignedAt = append(unsigned, mc), append(unsignedAt, i)
			continue
		}
		cs, at = append(cs, mc), append(at, i)
	}
	// A push is all or nothing: one bad change refuses the whole batch.
	if req.Push {
		var bad []string
		for _, r := range res.Results {
			if r.Code == http.StatusBadRequest {
				bad = append(bad, r.Error)
			}
		}
		if len(bad) > 0 {
			writeError(w, http.StatusBadRequest, "nothing changed: %s", strings.Join(bad, "; "))
			return
		}
	}
	if req.Push || len(req.Changes) > 1 {
		if n, have := a.removals(append(cs, unsigned...)); !req.AllowLargeRemoval && cellapi.LargeRemoval(n, have) {
			writeError(w, http.StatusPreconditionFailed, "%s", cellapi.LargeRemovalError(n, have))
			return
		}
	}
	// Egress rules of one app must not overlap, nor ingress rules: one
	// would hide the other's removal. The whole batch is refused and the
	// set stays as it was.
	if err := a.checkEgressSet(append(cs, unsigned...)); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := a.checkIngressSet(append(cs, unsigned...)); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if len(unsigned) > 0 {
		if err := a.mesh.SignPolicyChanges(unsigned); err != nil {
			code := http.StatusForbidden
			msg := err.Error()
			if errors.Is(err, store.ErrNoOperatorKey) {
				msg = fmt.Sprintf("cell %s cannot sign: %v (or WEFT_OPERATOR_KEY)", a.cfg.Name, err)
			}
			for _, i := range unsignedAt {
				res.Results[i] = cellapi.PolicyChangeResult{Code: code, Error: msg}
			}
		} else {
			cs, at = append(cs, unsigned...), append(at, unsignedAt...)
		}
	}
	changed, errs := a.mesh.ApplyPolicyChanges(cs)
	applied := false
	for j, c := range cs {
		res.Results[at[j]] = a.policyChangeResult(c, changed[j], errs[j])
		applied = applied || changed[j]
	}
	if applied {
		a.reconcileNow()
	}
	writeJSON(w, http.StatusOK, res)
}

// removals counts the changes of cs that remove a rule of the current set
// (each rule once) and returns it with the size of the set.
func (a *Agent) removals(cs []store.PolicyChange) (n, have int) {
	gone := map[string]bool{} // keys of rules removed by cs: found in the set?
	for _, c := range cs {
		switch {
		case c.Present:
		case c.IsIngress():
			gone[c.Ingress.Key()] = false
		case c.IsEgress():
			gone[c.Egress.Key()] = false
		default:
			gone[c.Rule.Key()] = false
		}
	}
	var keys []string
	for _, r := range a.mesh.Policies() {
		keys = append(keys, r.Key())
	}
	for _, r := range a.mesh.EgressRules() {
		keys = append(keys, r.Key())
	}
	for _, r := range a.mesh.IngressRules() {
		keys = append(keys, r.Key())
	}
	for _, k := range keys {
		if found, ok := gone[k]; ok && !found {
			gone[k] = true
			n++
		}
	}
	return n, len(keys)
}

// policyChangeResult is the answer to change c that the mesh applied
// (changed) or refused (err).
func (a *Agent) policyChangeResult(c store.PolicyChange, changed bool, err error) cellapi.PolicyChangeResult {
	var stale *store.StaleChangeError
	switch {
	case errors.As(err, &stale):
		return cellapi.PolicyChangeResult{Code: http.StatusConflict, Error: err.Error(), CurrentStamp: stale.Current}
	case err != nil && strings.HasPrefix(err.Error(), "policy change refused"):
		return cellapi.PolicyChangeResult{Code: http.StatusForbidden, Error: err.Error()}
	case err != nil && changed:
		return cellapi.PolicyChangeResult{Code: http.StatusInternalServerError, Error: err.Error()}
	case err != nil:
		return cellapi.PolicyChangeResult{Code: http.StatusBadRequest, Error: err.Error()}
	}
	verb := "removed"
	if c.Present {
		verb = "added"
	}
	switch {
	case changed:
		a.log.Info("policy "+verb, "rule", c.RuleString(), "origin", c.Origin, "signer", store.Fingerprint(c.Signer))
		if c.Present {
			return cellapi.PolicyChangeResult{Code: http.StatusCreated, Warnings: a.egressWarnings(c)}
		}
		return cellapi.PolicyChangeResult{Code: http.StatusNoContent}
	case c.Present:
		return cellapi.PolicyChangeResult{Code: http.StatusOK, Warnings: a.egressWarnings(c)}
	case c.IsEgress():
		return cellapi.PolicyChangeResult{Code: http.StatusNotFound, Error: "Egress rule does not exist."}
	case c.IsIngress():
		return cellapi.PolicyChangeResult{Code: http.StatusNotFound, Error: "Ingress rule does not exist."}
	}
	return cellapi.PolicyChangeResult{Code: http.StatusNotFound, Error: "Policy does not exist."}
}

func (a *Agent) egressWarnings(c store.PolicyChange) []string {
	if !c.IsEgress() {
		return nil
	}
	return c.Egress.Warnings(a.cfg.OverlayCIDR)
}

func (a *Agent) keyringStatus() cellapi.KeyringStatus {
	ks := a.mesh.Keyring()
	st := cellapi.KeyringStatus{Keys: ks}
	if len(ks) > 0 {
		st.Primary = ks[0]
	}
	return st
}

func (a *Agent) handleListClusterKeys(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.keyringStatus())
}

func (a *Agent) handleClusterKeyOp(w http.ResponseWriter, r *http.Request) {
	var op cellapi.KeyringRequest
	if !readJSON(w, r, &op) {
		return
	}
	apply := a.mesh.ApplyKeyringOp
	if len(op.Sig) == 0 {
		apply = a.mesh.SignKeyringOp // with this cell's operator key
	}
	if err := apply(store.KeyringOp(op)); err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, store.ErrNoOperatorKey) || strings.Contains(err.Error(), "refused") {
			code = http.StatusForbidden
		}
		writeError(w, code, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, a.keyringStatus())
}
