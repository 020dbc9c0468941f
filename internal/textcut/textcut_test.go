package textcut

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBytesNeverSplitsARune(t *testing.T) {
	s := strings.Repeat("é", 10) // 2 bytes each
	for n := 0; n <= len(s)+1; n++ {
		got := Bytes(s, n)
		if len(got) > n || !utf8.ValidString(got) || !strings.HasPrefix(s, got) || len(got) < n-1 {
			t.Errorf("Bytes(%d) = %q", n, got)
		}
	}
	if Bytes("abc", 3) != "abc" || Bytes("abc", 2) != "ab" {
		t.Error("ASCII cut wrong")
	}
}

func TestRunes(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{{"héllo", 2, "hé"}, {"héllo", 5, "héllo"}, {"héllo", 9, "héllo"}, {"a\xffb", 2, "a\xff"}, {"", 3, ""}, {"abc", 0, ""}} {
		if got := Runes(c.s, c.n); got != c.want {
			t.Errorf("Runes(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}

func TestValue(t *testing.T) {
	if v := Value(strings.Repeat("a", MaxValueBytes)); len(v) != MaxValueBytes {
		t.Errorf("a value at the cap was cut: %d bytes", len(v))
	}
	long := strings.Repeat("€", 200) // 3 bytes each
	v := Value(long)
	if len(v) > MaxValueBytes || !strings.HasSuffix(v, Marker) || !utf8.ValidString(v) || !strings.HasPrefix(long, strings.TrimSuffix(v, Marker)) {
		t.Errorf("Value = %q (%d bytes)", v, len(v))
	}
}

func FuzzBytes(f *testing.F) {
	f.Add("héllo wörld", 4)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n < 0 {
			return
		}
		got := Bytes(s, n)
		if len(got) > max(n, 0) && got != s || !strings.HasPrefix(s, got) {
			t.Fatalf("Bytes(%q, %d) = %q", s, n, got)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("Bytes(%q, %d) split a rune: %q", s, n, got)
		}
	})
}
