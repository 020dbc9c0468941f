package proc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var (
	idA = strings.Repeat("a", 64)
	idB = strings.Repeat("b", 64)
	idC = strings.Repeat("c", 64)
	idD = strings.Repeat("d", 64)
)

// Table-driven, over fixture trees (testdata/proc/<pid>/cgroup; each has a
// README saying what layout it stands for).
func TestCgroupFixtures(t *testing.T) {
	fs := New("testdata/proc")
	for _, tc := range []struct {
		pid  int
		want ContainerRef
	}{
		{1001, ContainerRef{Runtime: RuntimeDocker, ID: idA}},
		{1002, ContainerRef{Runtime: RuntimeDocker, ID: idA}},
		{1003, ContainerRef{Runtime: RuntimeDocker, ID: idB}},
		{1004, ContainerRef{Runtime: RuntimeDocker, ID: idC}},
		{1005, ContainerRef{Runtime: RuntimeDocker, ID: idA}}, // outermost
		{1006, ContainerRef{Runtime: RuntimeDocker, ID: idB}},
		{1007, ContainerRef{Runtime: RuntimePodman, ID: idC}},
		{1008, ContainerRef{Runtime: RuntimePodman, ID: idD}},
		{1009, ContainerRef{Runtime: RuntimeContainerd, ID: idA}},
		{1010, ContainerRef{}},
		{1011, ContainerRef{Runtime: RuntimeDocker, ID: idC}},
		{1012, ContainerRef{}},
		{1013, ContainerRef{}},
		{1014, ContainerRef{Runtime: RuntimeUnknown, ID: idB}},
		{1015, ContainerRef{Runtime: RuntimeDocker, ID: idA}},
	} {
		desc, _ := os.ReadFile(filepath.Join("testdata/proc", strconv.Itoa(tc.pid), "README"))
		got, err := fs.Cgroup(tc.pid)
		if err != nil {
			t.Fatal(err)
		}
		if got.Runtime != tc.want.Runtime || got.ID != tc.want.ID {
			t.Errorf("%d (%s): got %+v, want %+v", tc.pid, strings.TrimSpace(string(desc)), got, tc.want)
		}
	}
	if _, err := fs.Cgroup(99999); !os.IsNotExist(err) {
		t.Errorf("vanished pid: err = %v", err)
	}
}

func TestProcessFacts(t *testing.T) {
	fs := New("testdata/proc")
	st, err := fs.StartTime(1003)
	if err != nil || st != 10030 {
		t.Errorf("start time %d, %v", st, err)
	}
	uid, err := fs.UID(1003)
	if err != nil || uid != 1001 {
		t.Errorf("uid %d, %v", uid, err)
	}
	argv, err := fs.Argv(1003)
	if cmd := JoinCmdline(argv); err != nil || cmd != "python3 train.py --lr \uFFFD0.1" {
		t.Errorf("cmdline %q, %v", cmd, err)
	}
	if _, err := fs.Argv(99999); err == nil {
		t.Error("a vanished process has arguments")
	}
}

func TestRealProc(t *testing.T) {
	fs := New("")
	pid := os.Getpid()
	if uid, err := fs.UID(pid); err != nil || int(uid) != os.Getuid() {
		t.Errorf("uid %d %v", uid, err)
	}
	if st, err := fs.StartTime(pid); err != nil || st == 0 {
		t.Errorf("start %d %v", st, err)
	}
	if argv, err := fs.Argv(pid); err != nil || !strings.Contains(JoinCmdline(argv), "proc.test") {
		t.Errorf("cmdline %q %v", argv, err)
	}
}

func TestParseStatStartTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"1 (init) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 7 1 1", 7, true},
		{"2 (a) b) c) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 99 1 1", 99, true},
		{"3 (x) S 0 1", 0, false},
		{"no paren", 0, false},
		{"4 (x) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 notnum 1", 0, false},
	} {
		got, err := ParseStatStartTime([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%q: %d %v", tc.in, got, err)
		}
	}
}

func TestJoinCmdline(t *testing.T) {
	long := strings.Repeat("é", MaxCmdline)
	for _, tc := range []struct{ in, want string }{
		{"a\x00b\x00", "a b"},
		{"", ""},
		{"bad\xffutf8", "bad\uFFFDutf8"},
		{"new\nline\x1b[31m", "new\nline\x1b[31m"}, // kept as data; encoders escape it
	} {
		if got := cleanCmdline([]byte(tc.in)); got != tc.want {
			t.Errorf("%q: %q", tc.in, got)
		}
	}
	got := cleanCmdline([]byte(long))
	if len(got) > MaxCmdline || !strings.HasPrefix(long, got) || !strings.HasSuffix(got, "é") {
		t.Errorf("cap: %d bytes", len(got))
	}
}

func cleanCmdline(b []byte) string { return JoinCmdline(SplitCmdline(b)) }

// A path naming several containers lists them all, outer to inner: the
// caller credits the innermost one it knows.
func TestNestedChain(t *testing.T) {
	ref := ParseCgroup([]byte("12:pids:/docker/" + idA + "/" + idB + "\n"))
	chain := ref.Chain()
	if ref.ID != idA || len(chain) != 2 || chain[0].ID != idB || chain[0].Path != "/docker/"+idA+"/"+idB || chain[1].ID != idA ||
		chain[1].Path != "/docker/"+idA || chain[0].Hierarchy != "12" || chain[0].Full != ref.Full {
		t.Fatalf("chain %+v of %+v", chain, ref)
	}
	if c, ok := ref.Find(idB); !ok || c.Path != chain[0].Path {
		t.Errorf("Find(B) = %+v, %v", c, ok)
	}
	if _, ok := ref.Find(idC); ok {
		t.Error("Find(C) found a container the path does not name")
	}
}
