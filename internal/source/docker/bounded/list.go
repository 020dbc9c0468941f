package bounded

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Summary is what the Docker source reads of a listed container. Docker's
// summary also carries labels, mounts, ports and networks; an inspect reads
// those, and only for containers the source's cache does not hold.
type Summary struct {
	ID    string   `json:"Id"`
	Names []string `json:"Names"`
	State string   `json:"State"`
}

// DecodeSummaries reads a container list (a JSON array of objects) one
// entry at a time, keeping the fields of Summary and skipping the rest.
// It reads exactly what encoding/json reads into []Summary, and refuses
// what it refuses (FuzzDecodeSummaries holds it to that).
//
// A steady scan at 1,000 containers decodes 1.3 MB of list, almost all of
// it labels, mounts and networks that List never reads: encoding/json's
// two passes over each entry (its scanner, then reflection) took 8 ms of
// the scan's critical path. Here one validating pass skips those bytes
// and copies out the three fields. An entry it does not read the plain
// way (an escape or a non-ASCII byte in a key or in one of the fields, a
// key that only matches a field without regard to case, a null or other
// unexpected type) is decoded by encoding/json, so that the rules for
// such entries are encoding/json's own.
func DecodeSummaries(r io.Reader) ([]Summary, error) { return decodeSummaries(r, 64<<10) }

// decodeSummaries is DecodeSummaries through a window of the given size at
// first (tests make it small, so that entries span reads).
func decodeSummaries(r io.Reader, window int) ([]Summary, error) {
	lr := listReader{r: r, buf: make([]byte, 0, max(window, 1))}
	if c, err := lr.next(); err != nil {
		return nil, fmt.Errorf("container list: %w", err)
	} else if c != '[' {
		return nil, fmt.Errorf("container list: not a JSON array (starts with %q)", c)
	}
	lr.off++
	var sums []Summary
	for {
		c, err := lr.next()
		if err != nil {
			return nil, fmt.Errorf("container list: %w", err)
		}
		if c == ']' && len(sums) == 0 {
			lr.off++
			break
		}
		if len(sums) > 0 {
			if c == ']' {
				lr.off++
				break
			}
			if c != ',' {
				return nil, fmt.Errorf("container list, after entry %d: %q where a comma or the end was expected", len(sums)-1, c)
			}
			lr.off++
			if _, err := lr.next(); err != nil {
				return nil, fmt.Errorf("container list: %w", err)
			}
		}
		var s Summary
		for {
			n, plain, err := scanEntry(lr.buf[lr.off:], &s)
			if err == errShort && lr.more() {
				s = Summary{}
				continue
			}
			if err == errShort {
				err = io.ErrUnexpectedEOF
				if lr.err != nil && lr.err != io.EOF {
					err = lr.err // the body failed (ErrOverPass, a cut connection)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("container list, entry %d: %w", len(sums), err)
			}
			if !plain {
				s = Summary{}
				if err := json.Unmarshal(lr.buf[lr.off:lr.off+n], &s); err != nil {
					return nil, fmt.Errorf("container list, entry %d: %w", len(sums), err)
				}
			}
			lr.off += n
			break
		}
		if s.ID == "" {
			return nil, fmt.Errorf("container list, entry %d: no Id", len(sums))
		}
		sums = append(sums, s)
	}
	switch c, err := lr.next(); {
	case err == nil:
		return nil, fmt.Errorf("container list: data after the array (%q)", c)
	case err != io.EOF:
		return nil, fmt.Errorf("container list: %w", err)
	}
	return sums, nil
}

// listReader is a window on the list's body: buf[off:] is unread. The
// window grows to hold the largest entry.
type listReader struct {
	r   io.Reader
	buf []byte
	off int
	err error // the reader's error, once it has returned one
}

// more moves the unread bytes to the front and reads more after them,
// growing the window when it is full. It returns false when the body has
// ended (or failed) with nothing new read.
func (l *listReader) more() bool {
	if l.err != nil {
		return false
	}
	n := copy(l.buf[:cap(l.buf)], l.buf[l.off:])
	l.buf, l.off = l.buf[:n], 0
	if n == cap(l.buf) {
		l.buf = append(l.buf, make([]byte, cap(l.buf))...)[:n]
	}
	for {
		m, err := l.r.Read(l.buf[n:cap(l.buf)])
		l.buf = l.buf[:n+m]
		if err != nil {
			l.err = err
		}
		if m > 0 || err != nil {
			return m > 0
		}
	}
}

// next returns the next byte that is not whitespace, without consuming
// it: io.EOF at the end of the body.
func (l *listReader) next() (byte, error) {
	for {
		for l.off < len(l.buf) {
			switch c := l.buf[l.off]; c {
			case ' ', '\t', '\n', '\r':
				l.off++
			default:
				return c, nil
			}
		}
		if !l.more() {
			if l.err == nil || l.err == io.EOF {
				return 0, io.EOF
			}
			return 0, l.err
		}
	}
}

// errShort says the entry goes on past the bytes given.
var errShort = errors.New("entry cut short")

// maxDepth is encoding/json's nesting limit; the list itself is one level.
const maxDepth = 10000

// scanEntry checks that b starts with one JSON object, and returns its
// length. plain says it read the object's Id, Names and State into s; when
// it is false, the caller decodes the object with encoding/json.
func scanEntry(b []byte, s *Summary) (n int, plain bool, err error) {
	p := scanner{b: b}
	if p.i >= len(b) {
		return 0, false, errShort
	}
	if b[0] != '{' {
		return 0, false, fmt.Errorf("%q where an object was expected", b[0])
	}
	p.i++
	plain = true
	for first := true; ; first = false {
		c, err := p.ws()
		if err != nil {
			return 0, false, err
		}
		if c == '}' && first {
			p.i++
			return p.i, plain, nil
		}
		if !first {
			if c == '}' {
				p.i++
				return p.i, plain, nil
			}
			if c != ',' {
				return 0, false, fmt.Errorf("%q after an object member", c)
			}
			p.i++
			if c, err = p.ws(); err != nil {
				return 0, false, err
			}
		}
		if c != '"' {
			return 0, false, fmt.Errorf("%q where a key was expected", c)
		}
		ks, ke, kplain, err := p.str()
		if err != nil {
			return 0, false, err
		}
		if c, err = p.ws(); err != nil {
			return 0, false, err
		}
		if c != ':' {
			return 0, false, fmt.Errorf("%q after a key", c)
		}
		p.i++
		if _, err = p.ws(); err != nil {
			return 0, false, err
		}
		key := b[ks:ke]
		read := false // the value was read into s
		if kplain {
			switch string(key) {
			case "Id":
				read, err = p.plainString(&s.ID)
			case "State":
				read, err = p.plainString(&s.State)
			case "Names":
				read, err = p.plainStrings(&s.Names)
			}
			if err != nil {
				return 0, false, err
			}
		}
		if read {
			continue
		}
		// Not read: a field whose value is not a plain one, a key that
		// matches a field only without regard to case, or a key with an
		// escape or a non-ASCII byte make the entry encoding/json's.
		if !kplain || bytes.EqualFold(key, []byte("Id")) || bytes.EqualFold(key, []byte("State")) || bytes.EqualFold(key, []byte("Names")) {
			plain = false
		}
		if err := p.skip(2); err != nil {
			return 0, false, err
		}
	}
}

// scanner is a position in one entry's bytes.
type scanner struct {
	b []byte
	i int
}

// ws skips whitespace and returns the byte after it (errShort at the end).
func (p *scanner) ws() (byte, error) {
	for p.i < len(p.b) {
		switch c := p.b[p.i]; c {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return c, nil
		}
	}
	return 0, errShort
}

// str reads the string at p.i (its opening quote) and returns where its
// contents are; plain says they hold no escape and no byte past ASCII,
// so that they are the string itself.
func (p *scanner) str() (start, end int, plain bool, err error) {
	p.i++
	start, plain = p.i, true
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return start, p.i - 1, plain, nil
		case c == '\\':
			plain = false
			if p.i+1 >= len(p.b) {
				return 0, 0, false, errShort
			}
			switch p.b[p.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i += 2
			case 'u':
				if p.i+6 > len(p.b) {
					return 0, 0, false, errShort
				}
				for _, h := range p.b[p.i+2 : p.i+6] {
					if !isHex(h) {
						return 0, 0, false, fmt.Errorf("invalid escape in string: %q", p.b[p.i:p.i+6])
					}
				}
				p.i += 6
			default:
				return 0, 0, false, fmt.Errorf("invalid escape in string: %q", p.b[p.i:p.i+2])
			}
		case c < 0x20:
			return 0, 0, false, fmt.Errorf("control character %#x in string", c)
		default:
			if c >= 0x80 {
				plain = false
			}
			p.i++
		}
	}
	return 0, 0, false, errShort
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// plainString reads a plain string at p.i into dst. ok is false, with
// nothing read, when the value is anything else.
func (p *scanner) plainString(dst *string) (ok bool, err error) {
	if p.b[p.i] != '"' {
		return false, nil
	}
	save := p.i
	s, e, plain, err := p.str()
	if err != nil || !plain {
		p.i = save
		return false, err
	}
	*dst = string(p.b[s:e])
	return true, nil
}

// plainStrings reads an array of plain strings at p.i into dst. ok is
// false, with nothing read, when the value is anything else.
func (p *scanner) plainStrings(dst *[]string) (ok bool, err error) {
	if p.b[p.i] != '[' {
		return false, nil
	}
	save := p.i
	p.i++
	out := []string{}
	for {
		c, err := p.ws()
		if err != nil {
			p.i = save
			return false, err
		}
		if c == ']' && len(out) == 0 {
			p.i++
			*dst = out
			return true, nil
		}
		if len(out) > 0 {
			if c == ']' {
				p.i++
				*dst = out
				return true, nil
			}
			if c != ',' {
				p.i = save
				return false, nil
			}
			p.i++
			if _, err := p.ws(); err != nil {
				p.i = save
				return false, err
			}
		}
		var v string
		if ok, err := p.plainString(&v); !ok || err != nil {
			p.i = save
			return false, err
		}
		out = append(out, v)
	}
}

// skip checks the value at p.i and moves past it; depth is the nesting
// of the value's container (the list is 1).
func (p *scanner) skip(depth int) error {
	var stack []byte // the open objects ('{') and arrays ('[') in the value
	for {
		c, err := p.ws()
		if err != nil {
			return err
		}
		// A value.
		switch {
		case c == '{' || c == '[':
			if depth+len(stack)+1 > maxDepth {
				return errors.New("exceeded max depth")
			}
			p.i++
			stack = append(stack, c)
			c, err := p.ws()
			if err != nil {
				return err
			}
			if c == '}' && stack[len(stack)-1] == '{' || c == ']' && stack[len(stack)-1] == '[' {
				p.i++
				stack = stack[:len(stack)-1]
				break
			}
			if stack[len(stack)-1] == '{' {
				if err := p.key(c); err != nil {
					return err
				}
			}
			continue
		case c == '"':
			if _, _, _, err := p.str(); err != nil {
				return err
			}
		case c == '-' || '0' <= c && c <= '9':
			if err := p.num(); err != nil {
				return err
			}
		case c == 't':
			if err := p.lit("true"); err != nil {
				return err
			}
		case c == 'f':
			if err := p.lit("false"); err != nil {
				return err
			}
		case c == 'n':
			if err := p.lit("null"); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%q where a value was expected", c)
		}
		// After a value: close what ends here, or go on to the next.
		for {
			if len(stack) == 0 {
				return nil
			}
			c, err := p.ws()
			if err != nil {
				return err
			}
			top := stack[len(stack)-1]
			if c == ',' {
				p.i++
				if top == '{' {
					c, err := p.ws()
					if err != nil {
						return err
					}
					if err := p.key(c); err != nil {
						return err
					}
				}
				break
			}
			if top == '{' && c == '}' || top == '[' && c == ']' {
				p.i++
				stack = stack[:len(stack)-1]
				continue
			}
			return fmt.Errorf("%q after a value", c)
		}
	}
}

// key reads an object's key (starting with c) and its colon.
func (p *scanner) key(c byte) error {
	if c != '"' {
		return fmt.Errorf("%q where a key was expected", c)
	}
	if _, _, _, err := p.str(); err != nil {
		return err
	}
	c, err := p.ws()
	if err != nil {
		return err
	}
	if c != ':' {
		return fmt.Errorf("%q after a key", c)
	}
	p.i++
	return nil
}

// num checks a number at p.i: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
// A number that reaches the end of the bytes may go on: errShort.
func (p *scanner) num() error {
	b, i := p.b, p.i
	digits := func() int {
		n := 0
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return errShort
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		digits()
	default:
		return fmt.Errorf("invalid number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			if i >= len(b) {
				return errShort
			}
			return fmt.Errorf("invalid number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			if i >= len(b) {
				return errShort
			}
			return fmt.Errorf("invalid number")
		}
	}
	if i >= len(b) {
		return errShort
	}
	p.i = i
	return nil
}

// lit checks the literal w at p.i.
func (p *scanner) lit(w string) error {
	for k := 0; k < len(w); k++ {
		if p.i+k >= len(p.b) {
			return errShort
		}
		if p.b[p.i+k] != w[k] {
			return fmt.Errorf("invalid literal")
		}
	}
	p.i += len(w)
	return nil
}
