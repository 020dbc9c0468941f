//go:build e2e

package e2e

// The Debian package's life under a real systemd: the Python scanner's
// units left the way the upstream deploy.sh leaves them, install, the
// deploy.sh steps again, upgrade, purge. And lintian on the package.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// manTree is cacheTree plus man-db (for `man`) and logrotate, made once
// from it.
const manTree = cacheTree + "-man"

func ensureManTree(t *testing.T) string {
	t.Helper()
	ensureTree(t)
	if _, err := os.Stat(filepath.Join(manTree, "usr/bin/man")); err == nil {
		if _, err := os.Stat(filepath.Join(manTree, "usr/sbin/logrotate")); err != nil {
			t.Logf("installing logrotate into %s (once)", manTree)
			sh(t, "systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", manTree, "--", "sh", "-c",
				"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends logrotate >/dev/null && apt-get clean")
		}
		return manTree
	}
	tmp := manTree + ".tmp"
	exec.Command("rm", "-rf", tmp).Run()
	sh(t, "cp", "-a", "--reflink=auto", cacheTree, tmp)
	t.Logf("installing man-db into %s (once)", manTree)
	sh(t, "systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", tmp, "--", "sh", "-c",
		"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends man-db logrotate >/dev/null && apt-get clean")
	if _, err := os.Stat(filepath.Join(tmp, "usr/bin/man")); err != nil {
		t.Fatalf("man-db did not install into %s: %v", tmp, err)
	}
	if err := os.Rename(tmp, manTree); err != nil {
		t.Fatal(err)
	}
	return manTree
}

// buildDeb runs `make deb VERSION=version DIST=dir` and returns the package.
func buildDeb(t *testing.T, dir, version string) string {
	t.Helper()
	sh(t, "make", "-s", "-C", repoRoot(), "deb", "VERSION="+version, "DIST="+dir)
	m, _ := filepath.Glob(filepath.Join(dir, "ds01-detectord_"+version+"-1_*.deb"))
	if len(m) != 1 {
		t.Fatalf("make deb VERSION=%s: want one package in %s, got %v", version, dir, m)
	}
	return m[0]
}

// The Python scanner's units as the upstream deploy.sh installs them, with
// a stub scanner that counts its runs.
const (
	legacyService = `[Unit]
Description=DS01 workload detector (Python scanner)

[Service]
Type=oneshot
ExecStart=/opt/ds01-infra/scripts/monitoring/detect-workloads.sh
`
	legacyTimer = `[Unit]
Description=Run the DS01 workload detector every 2 s

[Timer]
OnActiveSec=1s
OnUnitActiveSec=2s
AccuracySec=100ms

[Install]
WantedBy=timers.target
`
	legacyScanner = "#!/bin/sh\ndate +%s.%N >> /var/tmp/legacy-scanner.runs\n"
	legacyCLI     = "#!/bin/bash\necho 'the old bash ds01-workloads'\n"
	// What deploy.sh does with them, run again after the package is in.
	deployLegacy = `set -e
cp /opt/ds01-infra/config/systemd/ds01-workload-detector.service /etc/systemd/system/
cp /opt/ds01-infra/config/systemd/ds01-workload-detector.timer /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now ds01-workload-detector.timer
ln -sf /opt/ds01-infra/scripts/monitoring/ds01-workloads /usr/local/bin/ds01-workloads
`
)

var legacyUnits = []string{"ds01-workload-detector.timer", "ds01-workload-detector.service"}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func (m *machine) unitState(unit string) (enabled, active string) {
	e, _ := m.in("systemctl", "is-enabled", unit)
	a, _ := m.in("systemctl", "is-active", unit)
	return strings.TrimSpace(e), strings.TrimSpace(a)
}

func (m *machine) legacyRuns() int {
	b, _ := os.ReadFile(filepath.Join(m.root, "var/tmp/legacy-scanner.runs"))
	return bytes.Count(b, []byte("\n"))
}

// assertLegacyRetired checks that both legacy units are masked through a
// /dev/null symlink in /etc/systemd/system and not running, and that the
// stub scanner no longer runs.
func (m *machine) assertLegacyRetired(when string) {
	m.t.Helper()
	for _, u := range legacyUnits {
		if e, a := m.unitState(u); e != "masked" || a != "inactive" {
			m.t.Errorf("%s: %s is-enabled=%q is-active=%q, want masked and inactive", when, u, e, a)
		}
		if l, err := os.Readlink(filepath.Join(m.root, "etc/systemd/system", u)); err != nil || l != "/dev/null" {
			m.t.Errorf("%s: /etc/systemd/system/%s: link %q (%v), want a mask (/dev/null)", when, u, l, err)
		}
	}
	n := m.legacyRuns()
	time.Sleep(3 * time.Second) // more than the timer's period
	if n2 := m.legacyRuns(); n2 != n {
		m.t.Errorf("%s: the legacy scanner still runs (%d runs, then %d)", when, n, n2)
	}
}

// startCount counts the daemon's own start lines in the journal.
func (m *machine) startCount() int {
	return strings.Count(m.journal("-o", "cat"), "ds01-detectord starting")
}

func (m *machine) eventsPath() string { return filepath.Join(m.root, "var/log/ds01/events.jsonl") }

// eventLines reads the event log: whole lines only (it fails on a last
// line without its newline), each a JSON object.
func (m *machine) eventLines() []string {
	m.t.Helper()
	b, err := os.ReadFile(m.eventsPath())
	if err != nil {
		m.t.Fatalf("event log: %v", err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		m.t.Fatalf("event log ends in a partial line: %q", b[bytes.LastIndexByte(b, '\n')+1:])
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var v map[string]any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			m.t.Fatalf("event log line %d is not a JSON object: %v: %s", len(lines)+1, err, sc.Text())
		}
		lines = append(lines, sc.Text())
	}
	return lines
}

func (m *machine) hasEvent(eventType, shortID string) bool {
	b, _ := os.ReadFile(m.eventsPath())
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `"event_type":"`+eventType+`"`) && strings.Contains(l, `"container_id":"`+shortID+`"`) {
			return true
		}
	}
	return false
}

// detectedAt is a container's detected_at in the state file ("" if absent).
func (m *machine) detectedAt(shortID string) string {
	b, err := os.ReadFile(m.statePath())
	if err != nil {
		return ""
	}
	var st struct {
		Containers map[string]struct {
			DetectedAt string `json:"detected_at"`
		} `json:"containers"`
	}
	if json.Unmarshal(b, &st) != nil {
		return ""
	}
	return st.Containers[shortID].DetectedAt
}

func TestDebLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the package test boots systemd-nspawn and installs packages into it: it must run as root ('sudo make test')")
	}
	start := time.Now()
	dist := t.TempDir()
	v1 := buildDeb(t, dist, "1.0.0")
	v2 := buildDeb(t, dist, "1.0.1")

	tree := ensureManTree(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	sh(t, "cp", "-a", "--reflink=auto", tree, root)
	t.Cleanup(func() { exec.Command("rm", "-rf", root).Run() })
	// Not /tmp: the booted container mounts a tmpfs there.
	os.MkdirAll(filepath.Join(root, "opt/debs"), 0o755)
	for _, p := range []string{v1, v2} {
		sh(t, "cp", p, filepath.Join(root, "opt/debs"))
	}
	inTree := func(p string) string { return "/opt/debs/" + filepath.Base(p) }

	// The upstream ds01-infra checkout, as deploy.sh finds it.
	writeFile(t, filepath.Join(root, "opt/ds01-infra/config/systemd/ds01-workload-detector.service"), legacyService, 0o644)
	writeFile(t, filepath.Join(root, "opt/ds01-infra/config/systemd/ds01-workload-detector.timer"), legacyTimer, 0o644)
	writeFile(t, filepath.Join(root, "opt/ds01-infra/scripts/monitoring/detect-workloads.sh"), legacyScanner, 0o755)
	writeFile(t, filepath.Join(root, "opt/ds01-infra/scripts/monitoring/ds01-workloads"), legacyCLI, 0o755)
	writeFile(t, filepath.Join(root, "opt/ds01-infra/deploy-legacy.sh"), deployLegacy, 0o755)

	d := dockertest.New(t, dockertest.Options{NvidiaHook: true})
	ctx := context.Background()
	m := boot(t, root, filepath.Join(d.Dir, "docker.sock"))

	// b. The legacy scanner, deployed and running.
	m.must("sh", "/opt/ds01-infra/deploy-legacy.sh")
	if e, a := m.unitState("ds01-workload-detector.timer"); e != "enabled" || a != "active" {
		t.Fatalf("legacy timer after deploy.sh: is-enabled=%q is-active=%q", e, a)
	}
	testutil.Eventually(t, 10*time.Second, "the legacy scanner runs", func() bool { return m.legacyRuns() >= 1 })

	// A container before the package: the first scan discovers it.
	before, err := d.Create(ctx, dockertest.Spec{Name: "pkg-before", Labels: map[string]string{"ds01.user": "alice"}})
	if err != nil {
		t.Fatal(err)
	}

	// c. Install v1.
	out := m.must("dpkg", "-i", inTree(v1))
	t.Logf("dpkg -i v1:\n%s", out)
	for _, want := range []string{
		"moved /etc/systemd/system/ds01-workload-detector.timer to /var/backups/ds01-detectord/ds01-workload-detector.timer",
		"moved /etc/systemd/system/ds01-workload-detector.service to /var/backups/ds01-detectord/ds01-workload-detector.service",
		"masked ds01-workload-detector.timer",
		"/usr/local/bin/ds01-workloads -> /opt/ds01-infra/scripts/monitoring/ds01-workloads comes before /usr/bin",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dpkg -i output lacks %q", want)
		}
	}
	if a := m.prop("ActiveState"); a != "active" {
		t.Fatalf("ds01-detectord after install: ActiveState=%s\n%s", a, m.journal())
	}
	if n := m.startCount(); n != 1 {
		t.Errorf("the install started the daemon %d times, want 1", n)
	}
	if e, _ := m.unitState("ds01-detectord.service"); e != "enabled" {
		t.Errorf("ds01-detectord after install: is-enabled=%q", e)
	}
	if ls := m.must("stat", "-c", "%U:%G %a", "/var/lib/ds01", "/var/log/ds01", "/var/log/ds01/events.jsonl"); ls != "root:docker 2775\nroot:docker 2775\nroot:docker 664\n" {
		t.Errorf("directories after install: %q", ls)
	}
	m.assertLegacyRetired("after install")
	for _, u := range legacyUnits {
		b, err := os.ReadFile(filepath.Join(root, "var/backups/ds01-detectord", u))
		want := legacyService
		if strings.HasSuffix(u, ".timer") {
			want = legacyTimer
		}
		if err != nil || string(b) != want {
			t.Errorf("backup of %s: %v %q", u, err, b)
		}
	}
	// The admin's link is left in place (and warned about).
	if l, err := os.Readlink(filepath.Join(root, "usr/local/bin/ds01-workloads")); err != nil || l != "/opt/ds01-infra/scripts/monitoring/ds01-workloads" {
		t.Errorf("/usr/local/bin/ds01-workloads after install: %q %v", l, err)
	}

	// The man pages, the completions, the docs.
	for _, page := range [][]string{{"ds01-workloads"}, {"8", "ds01-detectord"}} {
		out := m.must(append([]string{"env", "MANWIDTH=80", "man", "-P", "cat"}, page...)...)
		if !strings.Contains(out, page[len(page)-1]+" -") || !strings.Contains(out, "EXIT STATUS") || !strings.Contains(out, "--state-file") {
			t.Errorf("man %v:\n%s", page, out)
		}
	}
	// The completions are cobra's, generated from the command tree: the
	// bash one asks the binary (ds01-workloads __complete) for the words.
	if out := m.must("bash", "-c", "source /usr/share/bash-completion/completions/ds01-workloads && complete -p ds01-workloads"); !strings.Contains(out, "-F __start_ds01-workloads ds01-workloads") {
		t.Errorf("bash completion: %q", out)
	}
	if out := m.must("/usr/bin/ds01-workloads", "__complete", "--type", ""); !strings.Contains(out, "host-process") {
		t.Errorf("completion of --type: %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(root, "usr/share/fish/vendor_completions.d/ds01-workloads.fish")); err != nil || !bytes.Contains(b, []byte("complete -c ds01-workloads")) {
		t.Errorf("fish completion: %v %.40q", err, b)
	}
	if b, err := os.ReadFile(filepath.Join(root, "usr/share/zsh/vendor-completions/_ds01-workloads")); err != nil || !bytes.HasPrefix(b, []byte("#compdef ds01-workloads")) {
		t.Errorf("zsh completion: %v %.40q", err, b)
	}
	for _, f := range []string{"README.md", "INSTALL.md", "WORKLOADS.md", "METRICS.md", "ARCHITECTURE.md", "MIGRATION.md", "SECURITY.md", "alerts.yml", "ds01-fleet.json", "copyright", "changelog.Debian.gz"} {
		if _, err := os.Stat(filepath.Join(root, "usr/share/doc/ds01-detectord", f)); err != nil {
			t.Errorf("doc: %v", err)
		}
	}

	// ds01-workloads (the packaged one, by its full path: /usr/local/bin
	// still has the old script first) reads the state the daemon wrote.
	short := before[:12]
	testutil.Eventually(t, 10*time.Second, "pkg-before in the state file", func() bool { return m.detectedAt(short) != "" })
	if out := m.must("/usr/bin/ds01-workloads", "--all", "--no-trunc"); !strings.Contains(out, "pkg-before") || !strings.Contains(out, "alice") {
		t.Errorf("ds01-workloads --all:\n%s", out)
	}
	if out, err := m.in("/usr/bin/ds01-workloads", "--state-file", "/nonexistent"); err == nil {
		t.Errorf("ds01-workloads on a missing state file exited 0:\n%s", out)
	}

	// deploy.sh again: the copies go through the masks into /dev/null, the
	// enable fails visibly, and the old scanner stays off.
	if out, err := m.in("sh", "/opt/ds01-infra/deploy-legacy.sh"); err == nil || !strings.Contains(out, "masked") {
		t.Errorf("deploy.sh after install: err=%v, want a failure saying the unit is masked\n%s", err, out)
	} else {
		t.Logf("deploy.sh after install fails as it should:\n%s", out)
	}
	m.assertLegacyRetired("after deploy.sh ran again")

	// Events before the upgrade: one container created and one removed.
	during, err := d.Create(ctx, dockertest.Spec{Name: "pkg-during", Labels: map[string]string{"ds01.user": "bob"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Client.ContainerRemove(ctx, before, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the events of pkg-during and pkg-before", func() bool {
		return m.hasEvent("detection.container_discovered", during[:12]) && m.hasEvent("detection.container_exited", short)
	})
	// The package's logrotate rule: logrotate -f rotates the log into a
	// dated archive (copytruncate), the daemon goes on appending to the
	// live file, and report counts workloads from both. GPU time needs a
	// GPU: the daemon gets the tests' stand-in NVML library (one GPU, no
	// processes) through /etc/default, and the two containers a grant of
	// GPU 0, so their exited events carry allocated GPU-seconds.
	os.MkdirAll(filepath.Join(root, "opt/nvml"), 0o755)
	sh(t, "gcc", "-shared", "-fPIC", "-o", filepath.Join(root, "opt/nvml/libnvidia-ml.so.1"), filepath.Join(repoRoot(), "cmd/ds01-detectord/testdata/nvmlstub/nvmlstub.c"))
	writeFile(t, filepath.Join(root, "opt/nvml/gpu.txt"), "", 0o644)
	writeFile(t, filepath.Join(root, "etc/default/ds01-detectord"), "DS01_DETECTORD_OPTS=\"--nvml-library /opt/nvml/libnvidia-ml.so.1 --interval 2s\"\nDS01_NVML_STUB=/opt/nvml/gpu.txt\n", 0o644)
	m.must("systemctl", "restart", "ds01-detectord.service")
	testutil.Eventually(t, 20*time.Second, "the stand-in GPU in the state", func() bool {
		b, _ := os.ReadFile(m.statePath())
		return strings.Contains(string(b), "GPU-57ab0000")
	})
	gpuRun := func(name, user string) string {
		t.Helper()
		id, err := d.Create(ctx, dockertest.Spec{Name: name, Labels: map[string]string{"ds01.user": user}, Start: true,
			Host: container.HostConfig{Resources: container.Resources{DeviceRequests: []container.DeviceRequest{{DeviceIDs: []string{"0"}, Capabilities: [][]string{{"gpu"}}}}}}})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, name+" discovered", func() bool { return m.hasEvent("detection.container_discovered", id[:12]) })
		testutil.Eventually(t, 20*time.Second, name+"'s allocated GPU-seconds", func() bool {
			st, err := inventory.Read(m.statePath())
			return err == nil && st.Containers[id[:12]].GPUAllocatedSeconds > 0
		})
		if err := d.Client.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, name+"'s exit", func() bool { return m.hasEvent("detection.container_exited", id[:12]) })
		return id[:12]
	}
	rotatedOut := gpuRun("pkg-gpu-alice", "alice")
	if out := m.must("logrotate", "-d", "/etc/logrotate.conf"); strings.Contains(out, "duplicate") || !strings.Contains(out, "/var/log/ds01/events.jsonl") {
		t.Errorf("logrotate -d:\n%s", out)
	}
	m.must("logrotate", "-f", "/etc/logrotate.d/ds01-detectord")
	archive := "/var/log/ds01/events.jsonl-" + strings.TrimSpace(m.must("date", "+%Y%m%d"))
	if b, err := os.ReadFile(filepath.Join(root, archive)); err != nil || !strings.Contains(string(b), `"container_id":"`+rotatedOut+`"`) {
		t.Fatalf("after logrotate -f: %s: %v\n%s\n%s", archive, err, b, m.must("ls", "-l", "/var/log/ds01"))
	}
	if ls := m.must("stat", "-c", "%U:%G %a", "/var/log/ds01/events.jsonl"); ls != "root:docker 664\n" {
		t.Errorf("the live log after the rotation: %q", ls)
	}
	if m.hasEvent("detection.container_exited", rotatedOut) {
		t.Errorf("the live log still holds the rotated lines")
	}
	afterRotation := gpuRun("pkg-gpu-carol", "carol")
	if b, _ := os.ReadFile(m.eventsPath()); !strings.Contains(string(b), `"container_id":"`+afterRotation+`"`) {
		t.Errorf("the daemon did not append to the new log:\n%s", b)
	}
	var rep struct {
		Rows []struct {
			Key              string  `json:"key"`
			Workloads        int     `json:"workloads"`
			AllocatedSeconds float64 `json:"gpu_allocated_seconds"`
		} `json:"rows"`
	}
	repOut := m.must("/usr/bin/ds01-workloads", "report", "--since", "1h", "--json")
	if err := json.Unmarshal([]byte(repOut), &rep); err != nil {
		t.Fatalf("report --json: %v\n%s", err, repOut)
	}
	counted := map[string]float64{}
	for _, r := range rep.Rows {
		if r.Workloads == 1 {
			counted[r.Key] = r.AllocatedSeconds
		}
	}
	if counted["alice"] <= 0 || counted["carol"] <= 0 {
		t.Errorf("report across the rotation: alice (in the archive) and carol (in the live log), once each with allocated GPU-seconds; got %v\n%s", counted, repOut)
	}
	t.Logf("report across the rotation: allocated GPU-seconds %v", counted)

	// The admin's setting in the conffile, kept across the upgrade.
	writeFile(t, filepath.Join(root, "etc/default/ds01-detectord"), "# site setting\nDS01_DETECTORD_OPTS=\"--interval 20s\"\n", 0o644)
	m.must("systemctl", "restart", "ds01-detectord.service")

	// d. Upgrade to v2: one restart, the state and the log carry over.
	pid0, inv0, starts0 := m.prop("MainPID"), m.prop("InvocationID"), m.startCount()
	logBefore := m.eventLines()
	detectedDuring := m.detectedAt(during[:12])
	if detectedDuring == "" || len(logBefore) < 2 { // the live log since the rotation: carol's two lines
		t.Fatalf("before the upgrade: detected_at %q, %d event lines", detectedDuring, len(logBefore))
	}
	// A site rule for the same file, as the upstream deploy writes it: the
	// upgrade keeps it and moves the package's aside, so that logrotate does
	// not see the file named twice.
	writeFile(t, filepath.Join(root, "etc/logrotate.d/ds01"), "/var/log/ds01/events.jsonl {\n\tdaily\n\trotate 30\n\tcompress\n\tdelaycompress\n\tcopytruncate\n\tdateext\n\tsu root docker\n}\n", 0o644)
	out = m.must("dpkg", "-i", inTree(v2))
	t.Logf("dpkg -i v2:\n%s", out)
	if !strings.Contains(out, "/etc/logrotate.d/ds01 already rotates /var/log/ds01/events.jsonl") {
		t.Errorf("the upgrade did not say that the site's logrotate rule is kept")
	}
	if _, err := os.Stat(filepath.Join(root, "etc/logrotate.d/ds01-detectord")); !os.IsNotExist(err) {
		t.Errorf("/etc/logrotate.d/ds01-detectord next to the site's rule: %v", err)
	}
	if out, err := m.in("logrotate", "-d", "/etc/logrotate.conf"); err != nil || strings.Contains(out, "duplicate") {
		t.Errorf("logrotate -d with the site's rule: %v\n%s", err, out)
	}
	if a := m.prop("ActiveState"); a != "active" {
		t.Fatalf("after the upgrade: ActiveState=%s\n%s", a, m.journal())
	}
	pid1, inv1 := m.prop("MainPID"), m.prop("InvocationID")
	if pid1 == pid0 || inv1 == inv0 {
		t.Errorf("the upgrade did not restart the daemon: MainPID %s -> %s, InvocationID %s -> %s", pid0, pid1, inv0, inv1)
	}
	if n := m.startCount() - starts0; n != 1 {
		t.Errorf("the upgrade started the daemon %d times, want 1:\n%s", n, m.journal("-o", "cat"))
	}
	if r := m.prop("NRestarts"); r != "0" {
		t.Errorf("NRestarts=%s after the upgrade", r)
	}
	if v := strings.TrimSpace(m.must("dpkg-query", "-W", "-f=${Version} ${Status}", "ds01-detectord")); v != "1.0.1-1 install ok installed" {
		t.Errorf("dpkg-query after the upgrade: %q", v)
	}
	if v := strings.TrimSpace(m.must("/usr/bin/ds01-detectord", "--version")); v != "ds01-detectord 1.0.1" {
		t.Errorf("ds01-detectord --version after the upgrade: %q", v)
	}
	if cmdline := m.must("cat", "/proc/"+pid1+"/cmdline"); !strings.Contains(cmdline, "--interval\x0020s") {
		t.Errorf("the upgraded daemon does not run with the admin's /etc/default setting: %q", cmdline)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/default/ds01-detectord")); !strings.Contains(string(b), "# site setting") {
		t.Errorf("the upgrade replaced the admin's /etc/default/ds01-detectord: %q", b)
	}
	m.assertLegacyRetired("after the upgrade")
	// One more event after the upgrade, then: the old lines are a prefix of
	// the new log, no line twice, and pkg-during kept its detected_at.
	after, err := d.Create(ctx, dockertest.Spec{Name: "pkg-after"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the event of pkg-after", func() bool { return m.hasEvent("detection.container_discovered", after[:12]) })
	logAfter := m.eventLines()
	if len(logAfter) <= len(logBefore) {
		t.Fatalf("event log: %d lines before the upgrade, %d after", len(logBefore), len(logAfter))
	}
	for i, l := range logBefore {
		if logAfter[i] != l {
			t.Fatalf("event log line %d changed across the upgrade:\n%s\n%s", i+1, l, logAfter[i])
		}
	}
	seen := map[string]int{}
	for i, l := range logAfter {
		if j, dup := seen[l]; dup {
			t.Errorf("event log lines %d and %d are the same: %s", j+1, i+1, l)
		}
		seen[l] = i
	}
	if got := m.detectedAt(during[:12]); got != detectedDuring {
		t.Errorf("pkg-during's detected_at changed across the upgrade: %q -> %q", detectedDuring, got)
	}

	// The sealing key: made at the first start in a root-only directory,
	// the same across the upgrade (v1 made it; the journal says so once).
	keyPath := filepath.Join(root, "var/lib/ds01-detectord/seal.key")
	if fi, err := os.Stat(filepath.Dir(keyPath)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the sealing key's directory: %v %v", fi, err)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the sealing key: %v %v", fi, err)
	}
	if n := strings.Count(m.journal("-o", "cat"), "sealing key created"); n != 1 {
		t.Errorf("the sealing key was created %d times across install and upgrade, want once", n)
	}
	if out, err := m.in("/usr/bin/ds01-workloads", "verify"); err != nil {
		t.Errorf("verify after the upgrade: %v\n%s", err, out)
	}

	// d2. A planted symlink at the event log's path (the docker group can
	// write /var/log/ds01) makes systemd-tmpfiles fail (exit 73): the
	// postinst warns and goes on, retires the legacy units (deployed again
	// by deploy.sh meanwhile) and restarts the daemon.
	m.must("sh", "-c", "rm -f /etc/systemd/system/ds01-workload-detector.timer /etc/systemd/system/ds01-workload-detector.service && systemctl daemon-reload && sh /opt/ds01-infra/deploy-legacy.sh")
	testutil.Eventually(t, 10*time.Second, "the legacy scanner runs again", func() bool {
		e, a := m.unitState("ds01-workload-detector.timer")
		return e == "enabled" && a == "active"
	})
	m.must("sh", "-c", "mv /var/log/ds01/events.jsonl /var/log/ds01/events.jsonl.real && ln -s /etc/shadow /var/log/ds01/events.jsonl")
	inv2 := m.prop("InvocationID")
	out, err = m.in("dpkg", "-i", inTree(v2))
	if err != nil {
		t.Fatalf("dpkg -i over planted files failed: %v\n%s", err, out)
	}
	if !strings.Contains(out, "warning: systemd-tmpfiles --create exited") {
		t.Errorf("no warning about the planted files:\n%s", out)
	}
	if a := m.prop("ActiveState"); a != "active" || m.prop("InvocationID") == inv2 {
		t.Errorf("the daemon was not restarted over planted files: ActiveState=%s\n%s", a, out)
	}
	m.assertLegacyRetired("after dpkg -i over planted files")
	if b, err := os.ReadFile(filepath.Join(root, "etc/shadow")); err != nil || bytes.Contains(b, []byte("detection.")) {
		t.Errorf("the planted symlink's target was written: %v", err)
	}
	m.must("sh", "-c", "rm /var/log/ds01/events.jsonl && mv /var/log/ds01/events.jsonl.real /var/log/ds01/events.jsonl")

	// e. Purge: the package goes, the data stays, the masks stay.
	state, _ := os.ReadFile(m.statePath())
	m.must("dpkg", "--purge", "ds01-detectord")
	if _, a := m.unitState("ds01-detectord.service"); a != "inactive" {
		t.Errorf("after purge: ds01-detectord is-active=%q", a)
	}
	if l := m.prop("LoadState"); l != "not-found" {
		t.Errorf("after purge: LoadState=%s", l)
	}
	for _, p := range []string{"usr/bin/ds01-detectord", "usr/bin/ds01-workloads", "usr/lib/systemd/system/ds01-detectord.service",
		"usr/lib/tmpfiles.d/ds01-detectord.conf", "etc/default/ds01-detectord", "usr/lib/ds01-detectord",
		"etc/systemd/system/ds01-detectord.service", "etc/systemd/system/multi-user.target.wants/ds01-detectord.service",
		"var/lib/systemd/deb-systemd-helper-enabled/ds01-detectord.service.dsh-also", "var/lib/ds01-detectord"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("purge left /%s (%v)", p, err)
		}
	}
	if st := strings.TrimSpace(m.must("sh", "-c", "dpkg-query -W -f='${Status}' ds01-detectord 2>&1 || true")); strings.Contains(st, "installed") && !strings.Contains(st, "not-installed") {
		t.Errorf("dpkg-query after purge: %q", st)
	}
	if b, err := os.ReadFile(m.statePath()); err != nil || len(b) == 0 || !bytes.Equal(b, state) {
		t.Errorf("purge touched the state file: %v (%d bytes, %d before)", err, len(b), len(state))
	}
	final := m.eventLines()
	if len(final) < len(logAfter) {
		t.Errorf("purge shortened the event log: %d lines, %d before", len(final), len(logAfter))
	}
	for i, l := range logAfter {
		if i < len(final) && final[i] != l {
			t.Errorf("event log line %d changed by the purge", i+1)
			break
		}
	}
	if _, err := m.in("getent", "group", "docker"); err != nil {
		t.Errorf("purge removed the docker group")
	}
	m.assertLegacyRetired("after purge")
	for _, u := range legacyUnits {
		if _, err := os.Stat(filepath.Join(root, "var/backups/ds01-detectord", u)); err != nil {
			t.Errorf("purge removed the backup of %s: %v", u, err)
		}
	}
	t.Logf("package life (build, install, deploy.sh, upgrade, purge): %s", time.Since(start).Round(time.Second))
}

// TestLintian runs lintian on a package built with `make deb`: no error
// (E:) allowed; warnings and the rest are logged.
func TestLintian(t *testing.T) {
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Fatal("lintian not found: 'sudo make test' installs it (apt-get install lintian)")
	}
	deb := buildDeb(t, t.TempDir(), "1.0.0")
	cmd := exec.Command("lintian", "--info", "--pedantic", "--show-overrides", deb)
	out, err := cmd.CombinedOutput()
	var errs []string
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "E: "):
			errs = append(errs, l)
		case len(l) > 2 && l[1] == ':' && l[2] == ' ' && strings.Contains("WIPXO", l[:1]):
			t.Log(l)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("lintian errors:\n%s", strings.Join(errs, "\n"))
	}
	if err != nil {
		t.Fatalf("lintian %s: %v\n%s", deb, err, out)
	}
}
