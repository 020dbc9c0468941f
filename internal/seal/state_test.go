package seal

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"regexp"
	"testing"
)

// refMAC is the v2 MAC as docs/SECURITY.md and state.go define it, taken
// the plain way: cut the bytes before every "\n    \"", hash each piece,
// MAC the list.
func refMAC(k *Key, plain []byte) []byte {
	list := hmac.New(sha256.New, k.k)
	list.Write([]byte("ds01-detectord state v2\n"))
	bounds := []int{0}
	for i := 0; i+6 <= len(plain); i++ {
		if string(plain[i:i+6]) == "\n    \"" {
			bounds = append(bounds, i)
		}
	}
	bounds = append(bounds, len(plain))
	for j := 0; j+1 < len(bounds); j++ {
		sum := sha256.Sum256(plain[bounds[j]:bounds[j+1]])
		list.Write(sum[:])
	}
	return list.Sum(nil)[:macSize]
}

func macOf(t testing.TB, sealed []byte) []byte {
	m := regexp.MustCompile(`"_seal": "v2:([0-9a-f]{32})"\n}\n$`).FindSubmatch(sealed)
	if m == nil {
		t.Fatalf("no v2 seal in %q", sealed)
	}
	b, _ := hex.DecodeString(string(m[1]))
	return b
}

var stateSamples = []string{
	"{\n  \"containers\": {},\n  \"schema_version\": 2\n}\n",
	"{\n  \"containers\": {\n    \"a\": {\n      \"x\": 1\n    },\n    \"b\": {}\n  },\n  \"gpus\": {\n    \"GPU-1\": {}\n  }\n}\n",
	"\n    \"starts with a cut\": 1\n}\n",
	"\n    \"\n    \"\n    \"\n}\n", // cuts back to back
	"no cut at all\n}\n",
}

// The sealer's MAC is the one the definition gives, and a state sealed
// with it opens; a v1 seal (HMAC over the bytes) still opens.
func TestStateSealV2Definition(t *testing.T) {
	for _, plain := range stateSamples {
		sealed, err := testKey.SealState([]byte(plain))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := macOf(t, sealed), refMAC(testKey, []byte(plain)); !bytes.Equal(got, want) {
			t.Errorf("%q: MAC %x, the definition gives %x", plain, got, want)
		}
		if got, err := testKey.OpenState(sealed); err != nil || !bytes.Equal(got, []byte(plain)) {
			t.Errorf("%q: open: %v", plain, err)
		}
		// One byte changed in any piece breaks it.
		for i := range len(plain) - 3 {
			forged := bytes.Clone(sealed)
			forged[i] ^= 0x20
			if _, err := testKey.OpenState(forged); !errors.Is(err, ErrBadSeal) {
				t.Fatalf("%q with byte %d changed: %v", plain, i, err)
			}
		}
	}
	plain := []byte(stateSamples[1])
	v1 := hmac.New(sha256.New, testKey.k)
	v1.Write([]byte("ds01-detectord state v1\n"))
	v1.Write(plain)
	old := append(bytes.Clone(plain[:len(plain)-3]), []byte(",\n  \"_seal\": \"v1:"+hex.EncodeToString(v1.Sum(nil)[:macSize])+"\"\n}\n")...)
	if got, err := testKey.OpenState(old); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("v1 seal: %v", err)
	}
	if _, err := testKey.OpenState(bytes.Replace(old, []byte(`"x": 1`), []byte(`"x": 2`), 1)); !errors.Is(err, ErrBadSeal) {
		t.Errorf("v1 seal, edited: %v", err)
	}
	// The same MAC under v1 and v2 labels is not interchangeable.
	relabelled := bytes.Replace(old, []byte(`"v1:`), []byte(`"v2:`), 1)
	if _, err := testKey.OpenState(relabelled); !errors.Is(err, ErrBadSeal) {
		t.Errorf("v1 MAC labelled v2: %v", err)
	}
}

// sealPieces writes plain to a sealer in pieces: at each cut in cuts, a
// new piece, written as a segment where segs says so.
func sealPieces(plain []byte, cuts []int, segs []bool) []byte {
	s := testKey.NewStateSealer()
	prev := 0
	for i := 0; i <= len(cuts); i++ {
		end := len(plain)
		if i < len(cuts) {
			end = min(max(cuts[i], prev), len(plain))
		}
		p := plain[prev:end]
		if i < len(segs) && segs[i] {
			g := NewSegment(p)
			s.WriteSegment(&g)
		} else {
			s.Write(p)
		}
		prev = end
	}
	return s.mac()
}

// Whatever pieces the writer hands over, and whichever it hands over as
// kept segments, the MAC is the definition's.
func TestStateSealerPieces(t *testing.T) {
	plain := []byte(stateSamples[1])
	var cutsAt []int
	for i := 0; i+len(cut) <= len(plain); i++ {
		if bytes.HasPrefix(plain[i:], cut) {
			cutsAt = append(cutsAt, i)
		}
	}
	want := refMAC(testKey, plain)
	// Pieces at the cuts, every combination of segment or plain.
	for mask := 0; mask < 1<<(len(cutsAt)+1); mask++ {
		segs := make([]bool, len(cutsAt)+1)
		for i := range segs {
			segs[i] = mask&(1<<i) != 0
		}
		if got := sealPieces(plain, cutsAt, segs); !bytes.Equal(got, want) {
			t.Errorf("pieces at the cuts, segments %v: %x, want %x", segs, got, want)
		}
	}
	// Pieces anywhere, all segments (most are not whole and are hashed as
	// bytes).
	for at := range len(plain) {
		if got := sealPieces(plain, []int{at}, []bool{true, true}); !bytes.Equal(got, want) {
			t.Errorf("pieces at %d: %x, want %x", at, got, want)
		}
	}
	// A segment is whole only when its kept hash can stand for a piece.
	for _, c := range []struct {
		b     string
		whole bool
	}{
		{"\n    \"a\": 1,", true},
		{"\n    \"a\": 1}", true},
		{"x\n    \"a\": 1,", false},           // does not start at a cut
		{"\n    \"a\": 1,\n    \"b\"", false}, // holds a second cut
		{"\n    \"a\": 1,\n  ", false},        // may end in the start of one
		{"\n    \"a\": 1,\n", false},
	} {
		if g := NewSegment([]byte(c.b)); g.Whole() != c.whole {
			t.Errorf("%q: whole %v, want %v", c.b, g.Whole(), c.whole)
		}
	}
}

// FuzzStateSealer: any bytes, cut into any pieces, some handed over as
// segments, give the definition's MAC.
func FuzzStateSealer(f *testing.F) {
	for _, s := range stateSamples {
		f.Add([]byte(s), uint16(7), uint16(30), uint8(5))
	}
	f.Add([]byte("\n    \"a\": 1,\n    \"b\": 2,\n    \"c\": 3"), uint16(0), uint16(12), uint8(7))
	f.Fuzz(func(t *testing.T, plain []byte, c1, c2 uint16, segs uint8) {
		cuts := []int{int(c1) % (len(plain) + 1), int(c2) % (len(plain) + 1)}
		if cuts[1] < cuts[0] {
			cuts[0], cuts[1] = cuts[1], cuts[0]
		}
		got := sealPieces(plain, cuts, []bool{segs&1 != 0, segs&2 != 0, segs&4 != 0})
		if want := refMAC(testKey, plain); !bytes.Equal(got, want) {
			t.Fatalf("%q cut at %v (segments %03b): %x, want %x", plain, cuts, segs, got, want)
		}
	})
}
