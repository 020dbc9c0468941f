// Package textcut cuts strings on a character boundary. Users set the
// names, labels and command lines the daemon stores, logs and shows, so
// each has a length cap, and a cut must never split a UTF-8 sequence.
package textcut

import "unicode/utf8"

// The cap on every user-controlled value the daemon stores (container
// names, users, images, owner signals, gpu_devices entries): anyone who can
// reach the Docker socket sets them, and a label can hold a megabyte. A
// longer value is cut by Value and ends in Marker.
const (
	MaxValueBytes = 256
	Marker        = "…"
)

// Bytes returns the longest prefix of s that is at most n bytes long and
// ends on a rune boundary: s itself when it is no longer.
func Bytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Runes returns the first n runes of s (an invalid byte counts as one, as
// utf8.RuneCountInString counts it): s itself when it has no more.
func Runes(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// Value returns a user-controlled value cut to MaxValueBytes, ending in
// Marker, when it is longer.
func Value(s string) string {
	if len(s) <= MaxValueBytes {
		return s
	}
	return Bytes(s, MaxValueBytes-len(Marker)) + Marker
}
