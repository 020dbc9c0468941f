package deliver

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/internal/statefile"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

var key = seal.NewKey(bytes.Repeat([]byte{5}, seal.KeySize))

func sealedState(t *testing.T, path string, st inventory.State) {
	t.Helper()
	if err := statefile.SaveWith(&statefile.Encoder{Key: key}, path, st, ""); err != nil {
		t.Fatal(err)
	}
}

// With a key every line is sealed, one chain across restarts (the head
// travels in the sealed state), and the state is sealed.
func TestLinesAndStateAreSealed(t *testing.T) {
	f := testutil.NewFiles(t)
	cfg := Config{StatePath: f.StatePath, EventsPath: f.EventsPath, Key: key}
	sink, st := Open(cfg, nil)
	sink.Deliver(st, [][]byte{[]byte(logged)})
	sink, st = Open(cfg, nil) // a restart
	if len(st.Containers) != 0 || st.SealHead != "" {
		t.Fatalf("reloaded state: %+v", st)
	}
	sink.Deliver(st, [][]byte{[]byte(unlogged)})
	b, _ := os.ReadFile(f.EventsPath)
	c := seal.NewChain(key)
	for i, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if s, _ := c.Next(l); s != seal.OK {
			t.Errorf("line %d: %v\n%s", i+1, s, b)
		}
	}
	if h, _ := c.Head(); h.Seq != 2 {
		t.Errorf("chain head %+v", h)
	}
	sb, _ := os.ReadFile(f.StatePath)
	if _, err := key.OpenState(sb); err != nil {
		t.Errorf("state: %v", err)
	}
}

// A state whose seal fails is not trusted: nothing of it is used (no
// containers, no counters, no unlogged lines appended), it is moved aside
// and one error says so. The Python scanner's state (no schema_version)
// is adopted; an unsealed state at the first start with a new key too.
func TestUntrustedStateIsNotUsed(t *testing.T) {
	forged := inventory.Empty()
	forged.Containers["aaaaaaaaaaaa"] = inventory.Container{ID: "aaaaaaaaaaaa", User: "alice", GPUHeldSeconds: 360000}
	forged.UnloggedEvents = []string{unlogged}
	for _, c := range []struct {
		name       string
		write      func(t *testing.T, path string)
		keyCreated bool
		trusted    bool
	}{
		{"unsealed", func(t *testing.T, p string) { statefile.Save(p, forged, "") }, false, false},
		{"edited after sealing", func(t *testing.T, p string) {
			sealedState(t, p, inventory.Empty())
			b, _ := os.ReadFile(p)
			b2, _ := statefile.Encode(forged)
			os.WriteFile(p, append(b2[:len(b2)-3], b[bytes.LastIndex(b, []byte(",\n  \"_seal\"")):]...), 0o644)
		}, false, false},
		{"sealed with another key", func(t *testing.T, p string) {
			statefile.SaveWith(&statefile.Encoder{Key: seal.NewKey(bytes.Repeat([]byte{6}, seal.KeySize))}, p, forged, "")
		}, false, false},
		{"Python scanner's", func(t *testing.T, p string) {
			os.WriteFile(p, []byte(`{"last_scan": null, "containers": {"aaaaaaaaaaaa": {"id": "aaaaaaaaaaaa", "user": "alice"}}, "host_processes": {}}`), 0o644)
		}, false, true},
		{"unsealed, key just created", func(t *testing.T, p string) { statefile.Save(p, forged, "") }, true, true},
		{"sealed", func(t *testing.T, p string) { sealedState(t, p, forged) }, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := testutil.NewFiles(t)
			c.write(t, f.StatePath)
			log, lines := testutil.Logger()
			sink, st := Open(Config{StatePath: f.StatePath, EventsPath: f.EventsPath, Key: key, KeyCreated: c.keyCreated}, log)
			sink.Deliver(st, nil)
			_, has := st.Containers["aaaaaaaaaaaa"]
			if has != c.trusted {
				t.Errorf("state used: %v, want %v", has, c.trusted)
			}
			errs := strings.Count(lines(), `"level":"error"`)
			aside, _ := filepath.Glob(f.StatePath + ".untrusted-*")
			if c.trusted && (errs != 0 || len(aside) != 0) || !c.trusted && (errs != 1 || len(aside) != 1 || !strings.Contains(lines(), "not trusted")) {
				t.Errorf("%d error lines, moved aside %v:\n%s", errs, aside, lines())
			}
			evs, _ := os.ReadFile(f.EventsPath)
			if !c.trusted && len(evs) != 0 {
				t.Errorf("lines from an untrusted state were appended:\n%s", evs)
			}
		})
	}
}
