package seal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var testKey = NewKey(bytes.Repeat([]byte{7}, KeySize))

func chainOf(lines ...string) ([][]byte, Head) {
	var out [][]byte
	var h Head
	for _, l := range lines {
		var s []byte
		s, h = testKey.SealLine([]byte(l), h)
		out = append(out, s)
	}
	return out, h
}

func statuses(lines [][]byte) []Status {
	c := NewChain(testKey)
	var out []Status
	for _, l := range lines {
		s, _ := c.Next(l)
		out = append(out, s)
	}
	return out
}

func TestLineSealsAndChain(t *testing.T) {
	lines, head := chainOf(`{"a":1}`, `{"a":2}`, `{"a":3}`, `{"a":4}`)
	if !bytes.HasPrefix(lines[0], []byte(`{"a":1,"seal":"v1:1:`)) || len(lines[0]) > len(`{"a":1}`)+MaxLineOverhead {
		t.Fatalf("sealed line %s", lines[0])
	}
	if head.Seq != 4 {
		t.Errorf("head %v", head)
	}
	for _, s := range statuses(lines) {
		if s != OK {
			t.Fatalf("intact chain: %v", statuses(lines))
		}
	}
	edited := bytes.Replace(lines[1], []byte(`"a":2`), []byte(`"a":9`), 1)
	forged, _ := NewKey(bytes.Repeat([]byte{8}, KeySize)).SealLine([]byte(`{"a":5}`), head)
	cases := []struct {
		name  string
		lines [][]byte
		want  []Status
	}{
		{"appended unsealed", append(clone(lines), []byte(`{"user":"alice","gpu_held_seconds":360000}`)), []Status{OK, OK, OK, OK, Unsealed}},
		{"appended with another key", append(clone(lines), forged), []Status{OK, OK, OK, OK, BadMAC}},
		{"edited", [][]byte{lines[0], edited, lines[2], lines[3]}, []Status{OK, BadMAC, Gap, OK}},
		{"deleted", [][]byte{lines[0], lines[2], lines[3]}, []Status{OK, Gap, OK}},
		{"reordered", [][]byte{lines[0], lines[2], lines[1], lines[3]}, []Status{OK, Gap, Replayed, OK}},
		{"duplicated", [][]byte{lines[0], lines[1], lines[1], lines[2]}, []Status{OK, OK, Replayed, OK}},
		{"seal moved to another line", [][]byte{lines[0], append([]byte(`{"a":7`), lines[1][len(`{"a":2`):]...)}, []Status{OK, BadMAC}},
	}
	for _, c := range cases {
		if got := statuses(c.lines); !equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	// The end of the log against the head a state recorded.
	c := NewChain(testKey)
	for _, l := range lines[:3] {
		c.Next(l)
	}
	if err := c.CheckEnd(head, nil); err == nil || !strings.Contains(err.Error(), "deleted from its end") {
		t.Errorf("last line deleted: %v", err)
	}
	if err := c.CheckEnd(head, lines[3:]); err != nil {
		t.Errorf("last line still queued in the state: %v", err)
	}
}

func clone(l [][]byte) [][]byte { return append([][]byte(nil), l...) }

func equal(a, b []Status) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStateSeal(t *testing.T) {
	plain := []byte("{\n  \"containers\": {},\n  \"schema_version\": 2\n}\n")
	sealed, err := testKey.SealState(plain)
	if err != nil {
		t.Fatal(err)
	}
	got, err := testKey.OpenState(sealed)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %v %q", err, got)
	}
	if !bytes.Equal(Unseal(sealed), plain) {
		t.Error("Unseal")
	}
	if _, err := testKey.OpenState(plain); !errors.Is(err, ErrUnsealed) {
		t.Errorf("unsealed: %v", err)
	}
	forged := bytes.Replace(sealed, []byte(`"containers": {}`), []byte(`"containers": {"x": 1}`), 1)
	if _, err := testKey.OpenState(forged); !errors.Is(err, ErrBadSeal) {
		t.Errorf("forged: %v", err)
	}
	if _, err := NewKey(bytes.Repeat([]byte{8}, KeySize)).OpenState(sealed); !errors.Is(err, ErrBadSeal) {
		t.Errorf("another key: %v", err)
	}
}

// The key is created once, 0600 in a 0700 directory, and read back; a key
// others can read is refused.
func TestKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ds01-detectord")
	path := filepath.Join(dir, "seal.key")
	k, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v", fi.Mode())
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", fi.Mode())
	}
	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created || !bytes.Equal(k.k, k2.k) {
		t.Fatalf("second load: %v %v", created, err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadKey(path); err == nil {
		t.Error("a world-readable key was accepted")
	}
}
