package main

import (
	"bytes"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/daemon"
	"github.com/ds01/ds01-detectord/internal/reconcile"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"},
		{"--interval", "soon"},
		{"--interval", "0s"},
		{"--dry-run"},
		{"--log-level", "loud", "--once"},
		{"--log-format", "xml", "--once"},
		{"extra-arg"},
		{"--interval", "5"},
		{"--web.systemd-socket"},
		{"--idle-net-threshold", "lots"},
		{"--idle-window", "0"},
		{"--idle-cpu-threshold", "-1"},
	} {
		var out, errb bytes.Buffer
		if rc := run(args, &out, &errb); rc != 2 {
			t.Errorf("%v: exit %d, want 2", args, rc)
		}
		// The error and where to get help: two lines, no usage dump.
		if n := strings.Count(errb.String(), "\n"); n != 2 || !strings.HasPrefix(errb.String(), "ds01-detectord: error: ") {
			t.Errorf("%v: want two lines on stderr, got %q", args, errb.String())
		}
		if out.Len() != 0 {
			t.Errorf("%v: stdout %q", args, out.String())
		}
	}
	var out, errb bytes.Buffer
	for _, h := range []string{"-h", "--help"} {
		out.Reset()
		errb.Reset()
		if rc := run([]string{h}, &out, &errb); rc != 0 || !strings.Contains(out.String(), "--once") || !strings.Contains(out.String(), "--web.listen-address=") || errb.Len() != 0 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", h, rc, out.String(), errb.String())
		}
		// No internal sentinels in the defaults.
		if strings.Contains(out.String(), "-1") || strings.Contains(out.String(), "metrics-listen") {
			t.Errorf("%s shows a sentinel or the hidden alias:\n%s", h, out.String())
		}
	}
	out.Reset()
	if rc := run([]string{"--version"}, &out, &errb); rc != 0 || !strings.HasPrefix(out.String(), "ds01-detectord ") {
		t.Errorf("--version: exit %d, %q", rc, out.String())
	}
}

// Scripts and /etc/default files written for Go's flag package used single
// dashes; they keep working.
func TestSingleDashSpellings(t *testing.T) {
	var errb bytes.Buffer
	cfg, err := parseFlags([]string{"-interval", "5s", "-state-file=/x/s.json", "-once", "-web.listen-address", "127.0.0.1:9", "-exclude-process", "a", "--exclude-process", "b"}, &errb, &errb)
	if err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	d := cfg.d
	if d.Interval != 5*time.Second || d.Files.StatePath != "/x/s.json" || !cfg.once || !slices.Equal(d.Web.ListenAddresses, []string{"127.0.0.1:9"}) ||
		!slices.Equal(d.Rules.Excluded, append(slices.Clone(reconcile.DefaultExcluded), "a", "b")) {
		t.Errorf("parsed %+v", cfg)
	}
	if d.Files.EventsPath != "/var/log/ds01/events.jsonl" || d.ScanTimeout != 25*time.Second || d.Rules.IdleThreshold != 5 {
		t.Errorf("defaults: %+v", cfg)
	}
}

// The flags' defaults are daemon.Defaults, where every default is set.
func TestFlagDefaultsAreTheDaemonDefaults(t *testing.T) {
	var errb bytes.Buffer
	cfg, err := parseFlags(nil, &errb, &errb)
	if err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	if want := daemon.Defaults(); !reflect.DeepEqual(cfg.d, want) {
		t.Errorf("no flags:\n%+v\nDefaults:\n%+v", cfg.d, want)
	}
}

func TestOnceWithoutDockerStillWrites(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	var out, errb bytes.Buffer
	rc := run([]string{"--docker-host", "unix://" + filepath.Join(dir, "none.sock"), "--state-file", state,
		"--events-file", filepath.Join(dir, "e.jsonl"), "--log-format", "console", "--once", "--seal-key", testSealKey}, &out, &errb)
	if rc != 0 {
		t.Fatalf("exit %d", rc)
	}
	st, err := inventory.Read(state)
	if err != nil || st.Sources.Docker.OK || st.Sources.Docker.Error == "" {
		t.Fatalf("state %+v, err %v", st, err)
	}
}

// The metrics endpoint is on by default, on loopback; --metrics-listen is
// another name for --web.listen-address.
func TestListenFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"127.0.0.1:19400"}},
		{[]string{"--web.listen-address", ""}, nil},
		{[]string{"--web.listen-address="}, nil},
		{[]string{"--metrics-listen", ""}, nil},
		{[]string{"--web.listen-address", "172.17.0.1:19400"}, []string{"172.17.0.1:19400"}},
		{[]string{"--web.listen-address", "127.0.0.1:19400", "--web.listen-address", "172.17.0.1:19400"}, []string{"127.0.0.1:19400", "172.17.0.1:19400"}},
		{[]string{"--metrics-listen", "127.0.0.1:9102"}, []string{"127.0.0.1:9102"}},
		{[]string{"--metrics-listen", "127.0.0.1:9102", "--web.listen-address", "127.0.0.1:9102"}, []string{"127.0.0.1:9102"}},
		{[]string{"--metrics-listen", "", "--web.listen-address", ""}, nil},
	} {
		var errb bytes.Buffer
		cfg, err := parseFlags(c.args, &errb, &errb)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if !slices.Equal(cfg.d.Web.ListenAddresses, c.want) {
			t.Errorf("%q: listen on %q, want %q", c.args, cfg.d.Web.ListenAddresses, c.want)
		}
	}
	for _, args := range [][]string{
		{"--metrics-listen", "127.0.0.1:9102", "--web.listen-address", "127.0.0.1:19400"},
		{"--metrics-listen", "", "--web.listen-address", "127.0.0.1:19400"},
		{"--metrics-listen", "127.0.0.1:9102", "--web.listen-address", "127.0.0.1:9102", "--web.listen-address", "[::1]:9102"},
	} {
		var out, errb bytes.Buffer
		if rc := run(args, &out, &errb); rc != 2 || !strings.Contains(errb.String(), "--metrics-listen") {
			t.Errorf("%q: exit %d, %q", args, rc, errb.String())
		}
	}
}

// The man page's OPTIONS come from the flags: every visible one is there.
func TestManOptionsListEveryFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := run([]string{"--help-man-options"}, &out, &errb); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errb.String())
	}
	var c config
	app := newApp(&c, map[string]*bool{}, &out)
	for _, f := range app.Model().Flags {
		if !f.Hidden && f.Name != "help" && !strings.Contains(out.String(), "**--"+f.Name+"**") {
			t.Errorf("--%s is not in the man page's options", f.Name)
		}
	}
	if strings.Contains(out.String(), "metrics-listen") || !strings.Contains(out.String(), "**--interval** *DURATION*") {
		t.Errorf("man options:\n%s", out.String())
	}
}
