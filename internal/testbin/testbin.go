// Package testbin builds the module's programs for the tests that run them
// as processes (the daemon, the CLI, the demo, the test containers'
// helper): each one once per test process, into one temporary directory
// that Main removes at the end. It is used by tests and by the test rigs
// (internal/dockertest) only.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]*result{}
)

type result struct {
	n    int // its subdirectory
	once sync.Once
	path string
	err  error
}

// Build returns the path of the program built from pkg, a package
// directory relative to the module root ("cmd/ds01-detectord"), with env
// added to the go command's environment ("CGO_ENABLED=0") and flags given
// to go build ("-trimpath"). The first call for a package, environment and
// flags builds it; later calls in the same test process return the same
// file.
func Build(pkg string, env []string, flags ...string) (string, error) {
	key := pkg + "\x00" + strings.Join(env, "\x00") + "\x01" + strings.Join(flags, "\x00")
	mu.Lock()
	r := built[key]
	if r == nil {
		r = &result{n: len(built)}
		built[key] = r
	}
	mu.Unlock()
	r.once.Do(func() { r.path, r.err = build(pkg, env, flags, r.n) })
	return r.path, r.err
}

// Path is Build for a test, with the go command's environment as it is: it
// fails the test when the build fails.
func Path(t testing.TB, pkg string, flags ...string) string {
	t.Helper()
	p, err := Build(pkg, nil, flags...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func build(pkg string, env, flags []string, n int) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	mu.Lock()
	if dir == "" {
		dir, err = os.MkdirTemp("", "ds01-testbin-")
	}
	d := dir
	mu.Unlock()
	if err != nil {
		return "", err
	}
	// One subdirectory per build: two builds of one package do not share a
	// file.
	out := filepath.Join(d, fmt.Sprint(n), filepath.Base(pkg))
	args := append(append([]string{"build"}, flags...), "-o", out, "./"+filepath.ToSlash(pkg))
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./%s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// moduleRoot is the directory of the go.mod the working directory belongs
// to (tests run in their package's directory).
func moduleRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the module (go env GOMOD is %q)", mod)
	}
	return filepath.Dir(mod), nil
}

// Clean removes every program built so far.
func Clean() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// Main runs the tests and removes the programs they built; a package whose
// tests call Build has `func TestMain(m *testing.M) { testbin.Main(m) }`.
func Main(m *testing.M) {
	code := m.Run()
	Clean()
	os.Exit(code)
}
