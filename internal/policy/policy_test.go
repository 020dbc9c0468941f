package policy

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// site copies the site's file as shipped (testdata/resource-limits.yaml,
// from ../shared/site-config) into a directory with the members files and
// overrides given, and loads it.
func site(t *testing.T, members map[string]string, overrides string) *Policy {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile("testdata/resource-limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "resource-limits.yaml")
	os.WriteFile(path, b, 0o644)
	os.Mkdir(filepath.Join(dir, "groups"), 0o755)
	for g, s := range members {
		os.WriteFile(filepath.Join(dir, "groups", g+".members"), []byte(s), 0o644)
	}
	if overrides != "" {
		os.WriteFile(filepath.Join(dir, "user-overrides.yaml"), []byte(overrides), 0o644)
	}
	p, warns, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) > 0 {
		t.Fatalf("warnings: %v", warns)
	}
	return p
}

func hours(h float64) *time.Duration {
	d := time.Duration(h * float64(time.Hour))
	return &d
}

func TestTheSitesFileAsShipped(t *testing.T) {
	p := site(t, map[string]string{
		"researcher": "# researchers\nrita\n  rob   # joined 2026\n\n",
		"faculty":    "fay\n",
		"student":    "sam\n",
	}, "rob:\n  idle_timeout_h: 6\n  max_runtime_h: 96\nsam:\n  idle_timeout_h: null\n")
	cases := []struct {
		user, origin string
		group, gsrc  string
		cpu          float64
		window       int
		timeout      *time.Duration
		tsrc         string
	}{
		{"rita", inventory.OriginManaged, "researcher", "members-file", 3, 4, hours(1), "group"},
		{"rob", inventory.OriginManaged, "researcher", "members-file", 3, 4, hours(6), "user-override"},
		{"fay", inventory.OriginManaged, "faculty", "members-file", 3, 4, hours(2), "group"},
		{"sam", inventory.OriginManaged, "student", "members-file", 2, 3, nil, "user-override (null: exempt)"},
		{"nobody", inventory.OriginManaged, "student", "default_group", 2, 3, hours(0.5), "defaults"},
		{"unknown", inventory.OriginManaged, "student", "default_group", 2, 3, hours(0.5), "defaults"},
		{"rita", inventory.OriginDevcontainer, "researcher", "members-file", 3, 4, nil, "container_types.devcontainer (null: exempt)"},
		{"rita", inventory.OriginCompose, "researcher", "members-file", 3, 4, hours(0.5), "container_types.compose"},
		{"nobody", inventory.OriginRawDocker, "student", "default_group", 2, 3, hours(0.5), "container_types.docker"},
		{"nobody", "", "student", "default_group", 2, 3, hours(0.25), "container_types.unknown"},
	}
	for _, c := range cases {
		a := p.For(c.user, c.origin)
		if a.Record.Group != c.group || a.Record.GroupSource != c.gsrc || a.CPUPercent != c.cpu || a.Window != c.window ||
			a.Record.TimeoutSource != c.tsrc || (a.Timeout == nil) != (c.timeout == nil) || (a.Timeout != nil && *a.Timeout != *c.timeout) {
			t.Errorf("%s/%s: got %+v timeout %v", c.user, c.origin, a.Record, a.Timeout)
		}
		if a.GPUPercent != 5 || a.NetBytes != 1048576 || a.Grace != 30*time.Minute {
			t.Errorf("%s: thresholds %+v", c.user, a.Thresholds)
		}
		if a.Record.IdleDetectionWindow != a.Window || a.Record.GracePeriodM != 30 || !strings.HasSuffix(a.Record.Source, "resource-limits.yaml") {
			t.Errorf("record %+v", a.Record)
		}
		if (a.Record.IdleTimeoutH == nil) != (a.Timeout == nil) {
			t.Errorf("record timeout %v vs %v", a.Record.IdleTimeoutH, a.Timeout)
		}
	}
	// admin has no policies of its own: the top-level ones.
	if a := p.For("x", inventory.OriginManaged); a.Record.Group != "student" {
		t.Errorf("x: %+v", a.Record)
	}
}

func TestMembershipOrderAndInline(t *testing.T) {
	main := []byte(`
default_group: b
groups:
  b:
    members: [carl, dora]
    policies: {cpu_idle_threshold: 9}
  a:
    members: [carl]
    idle_timeout_h: 3
policies:
  cpu_idle_threshold: 1
  grace_period_m: 0
`)
	p, err := Parse(main, nil, map[string][]byte{"a": []byte("dora\n")}, "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if a := p.For("carl", inventory.OriginManaged); a.Record.Group != "b" || a.Record.GroupSource != "inline-members" || a.CPUPercent != 9 {
		t.Errorf("carl: %+v", a)
	}
	// dora is inline in b, which comes first in the file.
	if a := p.For("dora", inventory.OriginManaged); a.Record.Group != "b" {
		t.Errorf("dora: %+v", a.Record)
	}
	if a := p.For("eve", inventory.OriginManaged); a.Record.Group != "b" || a.Grace != 0 || a.Timeout != nil || a.Record.TimeoutSource != "none" {
		t.Errorf("eve: %+v %v", a.Record, a.Timeout)
	}
}

func TestFlags(t *testing.T) {
	p := FromFlags(Defaults)
	a := p.For("alice", inventory.OriginManaged)
	if a.Thresholds != Defaults || a.Timeout != nil || a.Record.Source != "flags" || a.Record.Group != "" || a.Record.IdleDetectionWindow != 3 {
		t.Fatalf("%+v", a)
	}
}

func TestBrokenFiles(t *testing.T) {
	for name, s := range map[string]string{
		"not yaml":              "groups: [\n",
		"negative threshold":    "policies:\n  cpu_idle_threshold: -1\n",
		"text threshold":        "policies:\n  cpu_idle_threshold: low\n",
		"null threshold":        "policies:\n  cpu_idle_threshold: null\n",
		"fractional window":     "policies:\n  idle_detection_window: 2.5\n",
		"zero window":           "groups:\n  a:\n    policies:\n      idle_detection_window: 0\n",
		"unknown default group": "default_group: nobody\ngroups:\n  a: {}\n",
		"groups a list":         "groups: [a, b]\n",
		"group twice":           "groups:\n  a: {}\n  a: {}\n",
		"timeout text":          "defaults:\n  idle_timeout_h: soon\n",
	} {
		if _, err := Parse([]byte(s), nil, nil, "x.yaml"); err == nil {
			t.Errorf("%s: parsed", name)
		} else if !strings.Contains(err.Error(), "x.yaml") {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
	if _, err := Parse([]byte("groups: {}\n"), []byte("rob: [\n"), nil, "x.yaml"); err == nil {
		t.Error("broken overrides parsed")
	}
}

func TestUnreadableOverridesWarn(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resource-limits.yaml")
	os.WriteFile(path, []byte("groups: {}\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "user-overrides.yaml"), 0o755) // a directory: not readable as a file
	p, warns, err := Load(path)
	if err != nil || p == nil || len(warns) != 1 {
		t.Fatalf("p %v warns %v err %v", p, warns, err)
	}
	if _, _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("a missing policy file loaded")
	}
	// A FIFO at the path is an error, not a hang.
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("fifo: %v", err)
	}
}

// FuzzParse: any bytes either fail with an error or give a policy whose
// answers are sane.
func FuzzParse(f *testing.F) {
	site, _ := os.ReadFile("testdata/resource-limits.yaml")
	f.Add(site, []byte("rob:\n  idle_timeout_h: 6\n"), []byte("rita\n# x\n"))
	f.Add([]byte("groups:\n  a:\n    members: [x]\n    policies: {idle_detection_window: 2}\n"), []byte(nil), []byte("y"))
	f.Add([]byte("policies: {grace_period_m: 1e300}\n"), []byte(nil), []byte(nil))
	f.Fuzz(func(t *testing.T, main, over, members []byte) {
		p, err := Parse(main, over, map[string][]byte{"student": members, "a": members}, "f.yaml")
		if err != nil {
			return
		}
		for _, u := range []string{"rita", "x", "y", ""} {
			for _, o := range []string{inventory.OriginManaged, inventory.OriginDevcontainer, ""} {
				a := p.For(u, o)
				if a.Window < 1 || a.CPUPercent < 0 || a.GPUPercent < 0 || a.NetBytes < 0 || a.Grace < 0 || (a.Timeout != nil && *a.Timeout < 0) {
					t.Fatalf("%s/%s: %+v", u, o, a)
				}
			}
		}
	})
}
