//go:build integration

package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/testbin"
)

// TestMain removes the programs the tests built (testbin).
func TestMain(m *testing.M) { testbin.Main(m) }

// sudo make demo, as a newcomer runs it: within 90 s it shows a container
// with a GPU process and an idle holder; Ctrl-C then leaves no process,
// container, mount or directory of it behind.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the demo starts a private dockerd: run as root ('sudo make test')")
	}
	dir := t.TempDir()
	root, _ := filepath.Abs("../..")
	for _, pkg := range []string{"cmd/ds01-detectord", "cmd/ds01-workloads"} {
		if err := os.Symlink(testbin.Path(t, pkg), filepath.Join(dir, filepath.Base(pkg))); err != nil {
			t.Fatal(err)
		}
	}
	demo := testbin.Path(t, "internal/demo")
	cmd := exec.Command(demo, "--bin", dir, "--nvml-stub", filepath.Join(root, "cmd/ds01-detectord/testdata/nvmlstub/nvmlstub.c"))
	cmd.Dir = root
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out lockedBuilder // written by the reader, read here
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "Ctrl-C ends it") {
				close(ready)
			}
		}
		done <- cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("the demo ended first: %v\n%s", err, out.String())
	case <-time.After(3 * time.Minute):
		cmd.Process.Signal(syscall.SIGINT)
		t.Fatalf("no views within 3 minutes:\n%s", out.String())
	}
	took := time.Since(start)
	text := out.String()
	t.Logf("views after %s:\n%s", took.Round(time.Second), text)
	for _, re := range []string{
		`(?m)^ds01-managed\s+alice\s+0\s+29\.3GiB\s+85%`,           // a container with a GPU process
		`(?m)^compose\s+bob\s+0 \(\+all\)\s+19\.5GiB\s+0%\s+idle `, // the idle holder
		`sneaky \[gpu-without-access\]`,
		`(?m)^host-process\s+nobody\s+0\s+2\.0GiB`,
		`(?m)^GPU 0\s+Stand-in GPU`,
		`Period: `,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("no %s in the demo's output", re)
		}
	}
	dirs := regexp.MustCompile(`(/tmp/ds01-demo-[0-9]+|/tmp/dd[0-9]+)`).FindAllString(text, -1)
	pids := regexp.MustCompile(`PID (\d+)`).FindAllStringSubmatch(text, -1)
	if len(dirs) < 2 || len(pids) < 3 {
		t.Fatalf("the demo did not say its directories and PIDs: %v %v", dirs, pids)
	}

	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the demo after Ctrl-C: %v\n%s", err, out.String())
		}
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the demo did not end within 90 s of Ctrl-C")
	}
	// Nothing left: its processes, directories, mounts.
	for _, p := range pids {
		if _, err := os.Stat("/proc/" + p[1]); err == nil {
			t.Errorf("PID %s still runs after the demo", p[1])
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s is left behind (%v)", d, err)
		}
		if strings.Contains(string(mounts), d) {
			t.Errorf("a mount under %s is left behind", d)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		for _, d := range dirs {
			if strings.Contains(string(b), d) {
				t.Errorf("a process is left: %s %q", p, b)
			}
		}
	}
}

// lockedBuilder is a strings.Builder that one goroutine writes while
// another reads.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) WriteString(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
