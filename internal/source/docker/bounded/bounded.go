// Package bounded reads Docker's JSON within bounds: anyone who can start a
// container sets its labels, environment and names, so the transport cuts
// what users control before a decoder holds it, and the container list is
// decoded one entry and three fields at a time.
package bounded

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ds01/ds01-detectord/internal/textcut"
)

// Bounds on what the daemon decodes from Docker. Anyone who can start a
// container sets its labels, environment and names, and a label can hold
// a megabyte: 30 containers with 3,000 labels of 1 KB took the daemon
// from 22 MB to 431 MB while the client decoded them, and got it killed
// under the unit's MemoryMax. The bounds apply to the bytes as they stream
// in, before the client decodes them.
const (
	// MaxEntries caps the labels (Labels, an event's Attributes) and the
	// environment (Env) kept per container, besides the labels
	// classification reads (keptLabel).
	MaxEntries = 256
	// MaxString caps every string: names, label keys and values, Env
	// entries. Stored values are cut further (textcut.MaxValueBytes).
	MaxString = 4 << 10
	// passList and passOne are the response sizes read as they are: a
	// container list of several thousand ordinary containers, one inspect.
	// Past them the body is rewritten with the bounds (slower, bounded).
	passList = 16 << 20
	passOne  = 256 << 10
)

// keptLabel reports the labels kept whatever their number: the ones
// classification and ownership read.
func keptLabel(k string) bool {
	for _, p := range []string{"ds01.", "aime.mlc.", "devcontainer.", "com.docker.compose."} {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// Transport rewrites the JSON bodies of the calls the Docker source decodes
// (container list, inspect, the event stream) within the bounds.
type Transport struct{ Next http.RoundTripper }

func (t Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.Next.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "json") {
		return resp, err
	}
	p := r.URL.Path
	var pass int64
	switch {
	case strings.HasSuffix(p, "/containers/json"):
		if r.Context().Value(shrinkKey{}) == nil {
			// Streamed as it comes, up to passList: past it the read fails
			// with ErrOverPass and List asks again with the bounds.
			resp.Body = readCloser{&passReader{r: resp.Body, left: passList}, resp.Body}
		} else {
			resp.Body = boundBody(resp.Body, 0) // asked again: rewritten as it streams
		}
		if t, ok := r.Context().Value(takeKey{}).(*Taken); ok {
			t.Body = resp.Body
			resp.Body = io.NopCloser(strings.NewReader("[]"))
		}
		resp.ContentLength = -1
		resp.Header.Del("Content-Length")
		return resp, nil
	case strings.HasSuffix(p, "/json") && strings.Contains(p, "/containers/"):
		pass = passOne
	case strings.HasSuffix(p, "/events"):
		pass = 0 // a stream: always rewritten, one event at a time
	default:
		return resp, nil
	}
	resp.Body = boundBody(resp.Body, pass)
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	return resp, nil
}

// ErrOverPass ends a container list read that passed passList bytes.
var ErrOverPass = errors.New("container list larger than 16 MiB: reading it again within the bounds")

// shrinkKey marks, in a request's context, a list to rewrite within the
// bounds from its first byte.
type shrinkKey struct{}

// takeKey marks, in a request's context, a container list whose body the
// transport hands to List (the *taken under the key) rather than to the
// client, which decodes an empty list instead. The Docker source reads the three
// fields it needs one container at a time (DecodeSummaries), where the client would
// buffer the whole array and decode every container's labels, mounts and
// networks, which List never reads: at 1,000 containers that was a third
// of a steady cycle's CPU and several MB of garbage.
type takeKey struct{}

// Taken receives a container list's body (TakeList).
type Taken struct{ Body io.ReadCloser }

// TakeList returns ctx marked for a container list whose body the
// Transport hands to the caller, in the Taken, instead of to the client.
func TakeList(ctx context.Context) (context.Context, *Taken) {
	t := &Taken{}
	return context.WithValue(ctx, takeKey{}, t), t
}

// Shrink returns ctx marked for a container list rewritten within the
// bounds from its first byte (asked again after ErrOverPass).
func Shrink(ctx context.Context) context.Context { return context.WithValue(ctx, shrinkKey{}, true) }

// passReader reads at most left bytes from r, then fails with ErrOverPass.
type passReader struct {
	r    io.Reader
	left int64
}

func (p *passReader) Read(b []byte) (int, error) {
	if p.left < 0 {
		return 0, ErrOverPass
	}
	if int64(len(b)) > p.left+1 {
		b = b[:p.left+1]
	}
	n, err := p.r.Read(b)
	if p.left -= int64(n); p.left < 0 {
		return n, ErrOverPass
	}
	return n, err
}

// boundBody returns body as it is when it ends within pass bytes, else
// rewritten by shrink as it streams.
func boundBody(body io.ReadCloser, pass int64) io.ReadCloser {
	if pass > 0 {
		head, err := io.ReadAll(io.LimitReader(body, pass+1))
		if int64(len(head)) <= pass || err != nil {
			if err != nil {
				return errBody{body, err}
			}
			body.Close()
			return io.NopCloser(bytes.NewReader(head))
		}
		body = readCloser{io.MultiReader(bytes.NewReader(head), body), body}
	}
	pr, pw := io.Pipe()
	go func() {
		err := shrink(pw, body)
		body.Close()
		pw.CloseWithError(err)
	}()
	// Closing it closes Docker's body too: the goroutine, which may wait
	// for the next event, ends with it.
	return readCloser{pr, closers{pr, body}}
}

type closers []io.Closer

func (cs closers) Close() error {
	var err error
	for _, c := range cs {
		if e := c.Close(); err == nil {
			err = e
		}
	}
	return err
}

type readCloser struct {
	io.Reader
	io.Closer
}

type errBody struct {
	io.Closer
	err error
}

func (e errBody) Read([]byte) (int, error) { return 0, e.err }

// frame is one open object or array while shrinking.
type frame struct {
	object  bool
	key     bool   // an object expecting a key next
	n       int    // entries written
	limited bool   // Labels, Attributes or Env: at most MaxEntries
	name    string // the key this value is under
}

// shrink copies a stream of JSON values from r to w with every string cut
// to MaxString bytes and the entries of Labels, Attributes and Env objects
// or arrays cut to MaxEntries (labels classification reads kept). Each
// top-level value is flushed as soon as it is complete (the event stream).
func shrink(w io.Writer, r io.Reader) error {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	bw := bufio.NewWriterSize(w, 32<<10)
	var stack []frame
	pendingKey := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return bw.Flush()
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = &stack[len(stack)-1]
		}
		// A key of an object.
		if top != nil && top.object && top.key {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				bw.WriteByte('}')
				if err := endValue(bw, &stack); err != nil {
					return err
				}
				continue
			}
			k, _ := tok.(string)
			if top.limited && top.n >= MaxEntries && !keptLabel(k) {
				tok, err := dec.Token() // drop the entry: key and value
				if err != nil {
					return err
				}
				if err := discard(dec, tok); err != nil {
					return err
				}
				continue
			}
			if top.n > 0 {
				bw.WriteByte(',')
			}
			writeString(bw, k)
			bw.WriteByte(':')
			top.key = false
			pendingKey = k
			continue
		}
		// A value (of an object's key, of an array, or top-level).
		name := ""
		if top != nil && top.object {
			name = pendingKey
		}
		if top != nil && !top.object {
			if d, ok := tok.(json.Delim); ok && d == ']' {
				stack = stack[:len(stack)-1]
				bw.WriteByte(']')
				if err := endValue(bw, &stack); err != nil {
					return err
				}
				continue
			}
			if top.limited && top.n >= MaxEntries {
				if err := discard(dec, tok); err != nil {
					return err
				}
				continue
			}
			if top.n > 0 {
				bw.WriteByte(',')
			}
		}
		switch v := tok.(type) {
		case json.Delim:
			limited := name == "Labels" || name == "Attributes" || name == "Env"
			if v == '{' {
				stack = append(stack, frame{object: true, key: true, limited: limited, name: name})
				bw.WriteByte('{')
			} else {
				stack = append(stack, frame{limited: limited, name: name})
				bw.WriteByte('[')
			}
			continue
		case string:
			writeString(bw, v)
		case json.Number:
			bw.WriteString(v.String())
		case bool:
			fmt.Fprint(bw, v)
		case nil:
			bw.WriteString("null")
		}
		if err := endValue(bw, &stack); err != nil {
			return err
		}
	}
}

// discard reads the rest of a value whose first token is tok.
func discard(dec *json.Decoder, tok json.Token) error {
	depth := 0
	for {
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
		var err error
		if tok, err = dec.Token(); err != nil {
			return err
		}
	}
}

// endValue records a finished value in its parent, and flushes a finished
// top-level value.
func endValue(bw *bufio.Writer, stack *[]frame) error {
	if len(*stack) == 0 {
		bw.WriteByte('\n')
		return bw.Flush()
	}
	top := &(*stack)[len(*stack)-1]
	top.n++
	if top.object {
		top.key = true
	}
	return nil
}

func writeString(bw *bufio.Writer, s string) {
	b, _ := json.Marshal(textcut.Bytes(s, MaxString))
	bw.Write(b)
}
