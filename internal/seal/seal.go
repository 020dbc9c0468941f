// Package seal keeps the daemon's records honest against the users who
// can write where they live (/var/lib/ds01 and /var/log/ds01 are writable
// by the docker group), in the spirit of journald's Forward Secure
// Sealing: a secret key only root can read, an HMAC chain over the event
// log's lines and an HMAC over the state file.
//
//   - Each line the daemon appends ends with a "seal" member,
//     "v1:<seq>:<prev>:<mac>": its sequence number, the MAC of the sealed
//     line before it and its own MAC, over the sequence number, prev and
//     the line without the seal member. A line inserted, edited, reordered
//     or deleted breaks the MAC or the chain (Verifier).
//   - The state file ends with a "_seal" member, "v2:<mac>", over the file
//     without that member (SealState, OpenState; state.go says how the
//     MAC is taken so that a write among thousands of unchanged
//     containers does not hash them all again).
//
// What this proves and does not is in docs/SECURITY.md: root (and so the
// docker group under stock Docker) can read the key and forge anything.
package seal

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
)

// DefaultKeyPath is where the daemon keeps its key: a directory only root
// can enter, kept across upgrades and removed on purge.
const DefaultKeyPath = "/var/lib/ds01-detectord/seal.key"

// KeySize is the key's length in bytes.
const KeySize = 32

// macSize is the length of a MAC in a line or the state, in bytes.
const macSize = 16

// MaxLineOverhead is how much the seal adds to a line at most.
const MaxLineOverhead = len(`,"seal":"v1:`) + 20 + 1 + 2*macSize + 1 + 2*macSize + 1

// Key is a sealing key.
type Key struct{ k []byte }

// ErrNoKey says the key file does not exist.
var ErrNoKey = errors.New("no sealing key")

// LoadKey reads the key at path. It refuses a key file other users could
// read or write.
func LoadKey(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNoKey)
	}
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("sealing key %s: not a regular file of mode 0600 or stricter (%v): refusing it", path, fi.Mode())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("sealing key %s belongs to UID %d, not to this process: refusing it", path, st.Uid)
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("sealing key %s: %d bytes, want %d", path, len(b), KeySize)
	}
	return &Key{k: b}, nil
}

// LoadOrCreateKey reads the key at path, creating it (and its directory,
// mode 0700) when there is none. created says this call made it: the
// first start with sealing.
func LoadOrCreateKey(path string) (k *Key, created bool, err error) {
	k, err = LoadKey(path)
	if !errors.Is(err, ErrNoKey) {
		return k, false, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, err
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
		return nil, false, fmt.Errorf("sealing key directory %s: must be a directory only its owner can enter (mode 0700)", dir)
	}
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return nil, false, err
	}
	tmp, err := os.CreateTemp(dir, ".seal.key-*")
	if err != nil {
		return nil, false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return nil, false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, false, err
	}
	tmp.Close()
	// link, not rename: a key another process made meanwhile is kept.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			k, err := LoadKey(path)
			return k, false, err
		}
		return nil, false, err
	}
	return &Key{k: b}, true, nil
}

// NewKey makes a key from bytes (tests).
func NewKey(b []byte) *Key { return &Key{k: bytes.Clone(b)} }

func (k *Key) mac(parts ...[]byte) []byte {
	h := hmac.New(sha256.New, k.k)
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)[:macSize]
}

// Head is the end of a chain: the sequence number and MAC of the last
// sealed line. The zero Head starts a chain.
type Head struct {
	Seq uint64
	MAC [macSize]byte
}

// String renders h as "<seq>:<mac hex>" (the state's _seal_head).
func (h Head) String() string {
	return strconv.FormatUint(h.Seq, 10) + ":" + hex.EncodeToString(h.MAC[:])
}

// ParseHead reads a Head's String.
func ParseHead(s string) (Head, bool) {
	m := reHead.FindStringSubmatch(s)
	if m == nil {
		return Head{}, false
	}
	var h Head
	h.Seq, _ = strconv.ParseUint(m[1], 10, 64)
	hex.Decode(h.MAC[:], []byte(m[2]))
	return h, true
}

var (
	reHead     = regexp.MustCompile(`^([0-9]{1,20}):([0-9a-f]{32})$`)
	reLineSeal = regexp.MustCompile(`,"seal":"v1:([0-9]{1,20}):([0-9a-f]{32}):([0-9a-f]{32})"}$`)
	lineDomain = []byte("ds01-detectord event line v1\n")
)

func (k *Key) lineMAC(seq uint64, prev []byte, content []byte) []byte {
	return k.mac(lineDomain, []byte(strconv.FormatUint(seq, 10)), []byte{'\n'}, prev, content)
}

// SealLine returns line (a JSON object, no newline) with the seal member
// that chains it after h, and the new head.
func (k *Key) SealLine(line []byte, h Head) ([]byte, Head) {
	seq := h.Seq + 1
	mac := k.lineMAC(seq, h.MAC[:], line)
	out := make([]byte, 0, len(line)+MaxLineOverhead)
	out = append(out, line[:len(line)-1]...)
	out = append(out, `,"seal":"v1:`...)
	out = strconv.AppendUint(out, seq, 10)
	out = append(out, ':')
	out = hex.AppendEncode(out, h.MAC[:])
	out = append(out, ':')
	out = hex.AppendEncode(out, mac)
	out = append(out, `"}`...)
	next := Head{Seq: seq}
	copy(next.MAC[:], mac)
	return out, next
}

// Line is what a line's seal says.
type Line struct {
	Sealed bool // the line has a seal member
	Valid  bool // its MAC is right: the line is as the daemon wrote it
	Seq    uint64
	Prev   [macSize]byte
	MAC    [macSize]byte
}

// CheckLine reads and checks the seal of one line (no newline). A line
// without one has Sealed false.
func (k *Key) CheckLine(line []byte) Line {
	line = bytes.TrimRight(line, "\r\n")
	m := reLineSeal.FindSubmatchIndex(line)
	if m == nil {
		return Line{}
	}
	var l Line
	l.Sealed = true
	l.Seq, _ = strconv.ParseUint(string(line[m[2]:m[3]]), 10, 64)
	hex.Decode(l.Prev[:], line[m[4]:m[5]])
	hex.Decode(l.MAC[:], line[m[6]:m[7]])
	content := append(bytes.Clone(line[:m[0]]), '}')
	l.Valid = hmac.Equal(k.lineMAC(l.Seq, l.Prev[:], content), l.MAC[:])
	return l
}

// HasSeal reports whether line carries a seal member, without a key.
func HasSeal(line []byte) bool { return reLineSeal.Match(bytes.TrimRight(line, "\r\n")) }
