package proc

import (
	"reflect"
	"regexp"
	"testing"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("12:pids:/docker/" + idA + "\n0::/\n"))
	f.Add([]byte("0::/system.slice/docker-" + idA + ".scope\n"))
	f.Add([]byte("0::/ds01.slice/ds01-students.slice/docker-" + idB + ".scope/docker/" + idC + "\n"))
	f.Add([]byte("0::/system.slice/var-lib-docker-overlay2-" + idA + "-merged.mount\n"))
	f.Add([]byte("0::/libpod_parent/libpod-" + idD + "\n"))
	f.Add([]byte("garbage\n::\n5:cpu\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ref := ParseCgroup(b)
		if (ref.ID == "") != (ref.Runtime == "") {
			t.Fatalf("half a reference: %+v", ref)
		}
		for _, c := range ref.Chain() {
			if !hexID.MatchString(c.ID) || c.Runtime == "" || c.Path == "" {
				t.Fatalf("bad container in the chain: %+v", c)
			}
		}
		if len(ref.Inner) > maxNested {
			t.Fatalf("%d nested containers kept", len(ref.Inner))
		}
		if !reflect.DeepEqual(ParseCgroup(b), ref) {
			t.Fatal("not deterministic")
		}
	})
}

func FuzzStatAndCmdline(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 7 1 1"))
	f.Add([]byte("python3\x00train.py\x00\xff\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseStatStartTime(b)
		s := cleanCmdline(b)
		if len(s) > MaxCmdline {
			t.Fatalf("cmdline of %d bytes", len(s))
		}
		for _, r := range s {
			if r == 0 {
				t.Fatal("NUL in cmdline")
			}
		}
	})
}
