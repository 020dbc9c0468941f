// Package asciijson is the JSON encoder of every file and output this
// module writes: the state file, the event log's lines, and ds01-workloads'
// --json. It writes what Python's json.dumps writes by default (the
// replaced scanner's files are the format), pure printable ASCII.
package asciijson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Marshal encodes v as JSON the way Python's json.dumps does by default:
// every non-ASCII character becomes a \uXXXX escape, while <, > and & stay
// literal. Invalid UTF-8 becomes U+FFFD. The output is pure printable ASCII,
// so it cannot carry terminal escape sequences or raw newlines.
func Marshal(v any, indent string) ([]byte, error) {
	var e Encoder
	return e.Append(nil, v, indent, 0)
}

// Encoder encodes one value after another as Marshal does, keeping its
// buffers between calls: the state file's writer encodes hundreds of
// containers a cycle, and a fresh buffer for each was most of the
// garbage a cycle made. One goroutine at a time.
type Encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// Append appends v's encoding to dst: compact when indent is "", else
// indented as if it stood depth levels deep in a document that
// Marshal(_, indent) writes.
func (e *Encoder) Append(dst []byte, v any, indent string, depth int) ([]byte, error) {
	if e.enc == nil {
		e.enc = json.NewEncoder(&e.buf)
		e.enc.SetEscapeHTML(false)
	}
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		e.enc, e.buf = nil, bytes.Buffer{}
		return dst, err
	}
	b := escapeNonASCII(bytes.TrimSuffix(e.buf.Bytes(), []byte("\n")))
	if indent == "" {
		return append(dst, b...), nil
	}
	return indentDepth(dst, b, indent, depth), nil
}

// indentCompact indents compact JSON (as encoding/json writes it: no
// whitespace outside strings) exactly as json.Indent does, in one plain
// pass: the state file is rewritten every cycle, and json.Indent's
// byte-by-byte scanner was half of its cost.
func indentCompact(dst, src []byte, indent string) []byte {
	return indentDepth(dst, src, indent, 0)
}

func indentDepth(dst, src []byte, indent string, depth int) []byte {
	newline := func() {
		dst = append(dst, '\n')
		for i := 0; i < depth; i++ {
			dst = append(dst, indent...)
		}
	}
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch c {
		case '"':
			j := i + 1
			for j < len(src) && src[j] != '"' {
				if src[j] == '\\' {
					j++
				}
				j++
			}
			dst = append(dst, src[i:min(j+1, len(src))]...)
			i = j
		case '{', '[':
			dst = append(dst, c)
			if i+1 < len(src) && (src[i+1] == '}' || src[i+1] == ']') {
				dst = append(dst, src[i+1])
				i++
				continue
			}
			depth++
			newline()
		case '}', ']':
			depth--
			newline()
			dst = append(dst, c)
		case ',':
			dst = append(dst, c)
			newline()
		case ':':
			dst = append(dst, ':', ' ')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

func escapeNonASCII(b []byte) []byte {
	ascii := true
	for _, c := range b {
		if c >= 0x7f {
			ascii = false
			break
		}
	}
	if ascii {
		return b
	}
	var sb strings.Builder
	sb.Grow(len(b) + 16)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r < 0x7f:
			sb.WriteByte(byte(r))
		case r < 0x10000:
			fmt.Fprintf(&sb, `\u%04x`, r)
		default:
			r -= 0x10000
			fmt.Fprintf(&sb, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		}
	}
	return []byte(sb.String())
}
