package seal

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"regexp"
)

// State sealing. The file is indent-2 JSON ending in "\n}\n"; the seal is
// its last member, `"_seal": "v2:<mac>"`.
//
// The v2 MAC is not taken over the file's bytes in one pass but over a
// list of hashes, so that the daemon can keep the hash of each unchanged
// container's part of the file and a write among thousands of them hashes
// only what changed (an event scan among 2,000 idle containers rewrites a
// file of about 2.7 MB):
//
//   - The file without its seal member is cut before every occurrence of
//     the six bytes "\n" + four spaces + `"`: where a member of an object
//     at depth 2 begins (one container of "containers", one GPU of
//     "gpus", ...). Nothing else in the daemon's encoding has them:
//     deeper lines are indented further, and strings hold no raw newline.
//   - Each piece, the first from the start of the file and the last to
//     its end (either may be empty), is hashed with SHA-256.
//   - The MAC is HMAC-SHA256 under the key over "ds01-detectord state
//     v2\n" followed by those hashes in order, cut to 16 bytes.
//
// The pieces and their order are fixed by the bytes alone, and SHA-256
// binds each piece, so a MAC over the list covers the content as a MAC
// over the bytes would. A "v1:" seal (a build before 2026-12-06: an HMAC
// over the bytes themselves) is still accepted when read.
var (
	stateEnd    = []byte("\n}\n")
	reStateSeal = regexp.MustCompile(`,\n  "_seal": "v([12]):([0-9a-f]{32})"\n}\n$`)
	stateDomV1  = []byte("ds01-detectord state v1\n")
	stateDomV2  = []byte("ds01-detectord state v2\n")
	// cut is where the pieces of a v2 MAC begin.
	cut = []byte("\n    \"")
)

// Segment is one piece of a state file (see above) with its hash, kept by
// a writer that writes the same piece again: it starts at a cut, has no
// other, and cannot end in the first bytes of one. Pieces that are not
// (Whole false) are hashed as plain bytes when written.
type Segment struct {
	b     []byte
	sum   [sha256.Size]byte
	whole bool
}

// NewSegment hashes b for WriteSegment. b must not change afterwards.
func NewSegment(b []byte) Segment {
	g := Segment{b: b, whole: bytes.HasPrefix(b, cut) && !bytes.Contains(b[1:], cut)}
	for n := 1; g.whole && n < len(cut); n++ {
		g.whole = !bytes.HasSuffix(b, cut[:n])
	}
	if g.whole {
		g.sum = sha256.Sum256(b)
	}
	return g
}

// Bytes is the segment's content.
func (g Segment) Bytes() []byte { return g.b }

// Whole reports whether the segment's kept hash is used when it is
// written (see NewSegment).
func (g Segment) Whole() bool { return g.whole }

// StateSealer computes a state file's seal while it is written: the bytes
// of the file without its seal member go through Write and WriteSegment,
// in order.
type StateSealer struct {
	list hash.Hash // the MAC over the pieces' hashes
	seg  hash.Hash // the open piece, unless pend
	pend *Segment  // the open piece is this segment, so far
	buf  []byte    // plain bytes not yet cut
}

// NewStateSealer starts the (v2) MAC of a state file.
func (k *Key) NewStateSealer() *StateSealer {
	s := &StateSealer{list: hmac.New(sha256.New, k.k), seg: sha256.New()}
	s.list.Write(stateDomV2)
	return s
}

// Write adds plain bytes.
func (s *StateSealer) Write(b []byte) { s.buf = append(s.buf, b...) }

// WriteSegment adds a segment's bytes, using its kept hash when the piece
// it starts ends with it.
func (s *StateSealer) WriteSegment(g *Segment) {
	if !g.whole {
		s.Write(g.b)
		return
	}
	s.flush()
	s.close() // g starts at a cut
	s.pend = g
}

// flush cuts the plain bytes written so far. They cannot hold the start
// of a cut that goes on in the bytes still to come: those come either as
// plain bytes (appended to buf first) or as a segment (which starts with
// "\n", and no cut has a "\n" after its first byte).
func (s *StateSealer) flush() {
	b := s.buf
	for {
		i := bytes.Index(b, cut)
		if i < 0 {
			break
		}
		s.extend(b[:i])
		s.close()
		b = b[i:]
		s.extend(b[:1]) // the piece starts with the cut: no cut at its start again
		b = b[1:]
	}
	s.extend(b)
	s.buf = s.buf[:0]
}

// extend adds b to the open piece.
func (s *StateSealer) extend(b []byte) {
	if len(b) == 0 {
		return
	}
	if s.pend != nil { // the segment goes on: its kept hash is not the piece's
		s.seg.Reset()
		s.seg.Write(s.pend.b)
		s.pend = nil
	}
	s.seg.Write(b)
}

// close ends the open piece and adds its hash to the list.
func (s *StateSealer) close() {
	if s.pend != nil {
		s.list.Write(s.pend.sum[:])
		s.pend = nil
		return
	}
	var sum [sha256.Size]byte
	s.list.Write(s.seg.Sum(sum[:0]))
	s.seg.Reset()
}

func (s *StateSealer) mac() []byte {
	s.flush()
	s.close()
	return s.list.Sum(nil)[:macSize]
}

// Member is the seal member to put before the file's final "\n}\n", once
// every byte of the unsealed file was written.
func (s *StateSealer) Member() []byte {
	return []byte(`,` + "\n" + `  "_seal": "v2:` + hex.EncodeToString(s.mac()) + `"`)
}

// SealState returns the state file's bytes b with its seal.
func (k *Key) SealState(b []byte) ([]byte, error) {
	if !bytes.HasSuffix(b, stateEnd) {
		return nil, errors.New("seal state: the file does not end in \"\\n}\\n\"")
	}
	s := k.NewStateSealer()
	s.Write(b)
	out := append(bytes.Clone(b[:len(b)-len(stateEnd)]), s.Member()...)
	return append(out, stateEnd...), nil
}

// State errors.
var (
	ErrUnsealed  = errors.New("the state file has no seal")
	ErrBadSeal   = errors.New("the state file's seal does not match its content: it was not written by this daemon, or was changed since")
	errStateForm = errors.New("not a state file")
)

// OpenState checks a sealed state file's bytes (a v2 or a v1 seal) and
// returns them without the seal member. A file without one gives
// ErrUnsealed, one whose MAC is wrong ErrBadSeal.
func (k *Key) OpenState(b []byte) ([]byte, error) {
	m := reStateSeal.FindSubmatchIndex(b)
	if m == nil {
		if !bytes.HasSuffix(b, stateEnd) {
			return nil, errStateForm
		}
		return nil, ErrUnsealed
	}
	plain := append(b[:m[0]:m[0]], stateEnd...)
	var want [macSize]byte
	hex.Decode(want[:], b[m[4]:m[5]])
	var mac []byte
	if b[m[2]] == '1' { // an earlier build's: an HMAC over the bytes
		mac = k.mac(stateDomV1, plain)
	} else {
		s := k.NewStateSealer()
		s.buf = plain // cut in place: no second copy of a large file
		mac = s.mac()
	}
	if !hmac.Equal(mac, want[:]) {
		return nil, ErrBadSeal
	}
	return plain, nil
}

// Unseal returns the state file's bytes without a seal member, unchecked
// (readers without the key).
func Unseal(b []byte) []byte {
	if m := reStateSeal.FindIndex(b); m != nil {
		return append(bytes.Clone(b[:m[0]]), stateEnd...)
	}
	return b
}
