package bounded

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// shrink keeps the JSON valid and the same where it is within the bounds,
// cuts strings, and keeps at most MaxEntries labels, attributes and
// environment entries, plus every label classification reads.
func TestShrink(t *testing.T) {
	labels := map[string]string{"ds01.user": "alice", "com.docker.compose.project.working_dir": "/home/alice/x"}
	var env []string
	for i := 0; i < 3000; i++ {
		labels[fmt.Sprintf("a%04d", i)] = strings.Repeat("x", 1024)
		env = append(env, fmt.Sprintf("V%d=%s", i, strings.Repeat("y", 1024)))
	}
	labels["zz.long"] = strings.Repeat("é", 5000)
	type cfg struct {
		Labels map[string]string
		Env    []string
		Cmd    []string
		N      json.Number
		B      bool
		Nil    *int
	}
	type inspect struct {
		Id     string
		Name   string
		Config cfg
		Mounts []map[string]any
	}
	in := []inspect{
		{Id: "1", Name: strings.Repeat("n", 10000), Config: cfg{Labels: labels, Env: env, Cmd: []string{"a", "b"}, N: "3.5", B: true},
			Mounts: []map[string]any{{"Source": "/home/alice", "RW": true, "Deep": []any{map[string]any{"x": []any{1, 2}}}}}},
		{Id: "2", Name: "small", Config: cfg{Labels: map[string]string{"k": "v"}, Env: []string{"A=1"}}},
	}
	raw, _ := json.Marshal(in)
	stream := append(append(append([]byte{}, raw...), '\n'), raw...) // two top-level values, as the event stream
	var out bytes.Buffer
	if err := shrink(&out, bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	if out.Len() > 2*600<<10 { // 256 labels and 256 entries of 1 KB per value
		t.Errorf("shrunk to %d bytes, from %d", out.Len(), len(stream))
	}
	dec := json.NewDecoder(&out)
	for v := 0; v < 2; v++ {
		var got []inspect
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("value %d: %v", v, err)
		}
		c := got[0].Config
		if len(c.Labels) != MaxEntries+2 || c.Labels["ds01.user"] != "alice" || c.Labels["com.docker.compose.project.working_dir"] != "/home/alice/x" {
			t.Errorf("labels: %d, ds01.user %q", len(c.Labels), c.Labels["ds01.user"])
		}
		if len(c.Env) != MaxEntries || len(got[0].Name) != MaxString || !strings.HasPrefix(c.Env[0], "V0=") {
			t.Errorf("env %d, name %d", len(c.Env), len(got[0].Name))
		}
		if c.N != "3.5" || !c.B || c.Nil != nil || len(c.Cmd) != 2 || got[0].Mounts[0]["Source"] != "/home/alice" || fmt.Sprint(got[0].Mounts[0]["Deep"]) != "[map[x:[1 2]]]" {
			t.Errorf("values changed: %+v %+v", c, got[0].Mounts)
		}
		if len(got) != 2 || got[1].Name != "small" || got[1].Config.Labels["k"] != "v" || got[1].Config.Env[0] != "A=1" {
			t.Errorf("the small one changed: %+v", got[1])
		}
	}
	if err := dec.Decode(new(any)); err != io.EOF {
		t.Errorf("trailing: %v", err)
	}
}

type bodyTransport string

func (b bodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(string(b))), Request: r}, nil
}

// A container list within passList streams through unchanged; a larger one
// fails with ErrOverPass, and asked again (shrinkKey) comes within the bounds.
func TestListPassesOrIsAskedAgain(t *testing.T) {
	small := `[{"Id":"a","Labels":{"ds01.user":"alice"}}]`
	big := `[{"Id":"a","Labels":{"ds01.user":"alice","x":"` + strings.Repeat("x", passList) + `"}}]`
	get := func(body string, ctx context.Context) ([]byte, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v1.41/containers/json?all=1", nil)
		resp, err := Transport{Next: bodyTransport(body)}.RoundTrip(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	if b, err := get(small, context.Background()); err != nil || string(b) != small {
		t.Errorf("small list: %q, %v", b, err)
	}
	if _, err := get(big, context.Background()); !errors.Is(err, ErrOverPass) {
		t.Errorf("large list: %v, want ErrOverPass", err)
	}
	b, err := get(big, Shrink(context.Background()))
	if err != nil || len(b) > MaxString+100 || !strings.Contains(string(b), `"ds01.user":"alice"`) {
		t.Errorf("large list asked again: %d bytes, %v", len(b), err)
	}
}
