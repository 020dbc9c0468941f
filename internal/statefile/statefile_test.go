package statefile

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// A file exactly as the Python scanner wrote it.
const referenceFile = `{
  "last_scan": "2026-02-04T10:30:00.123456Z",
  "containers": {
    "abc123def456": {
      "id": "abc123def456",
      "name": "alice-proj._.1001",
      "origin": "ds01-managed",
      "user": "alice",
      "has_gpu": true,
      "gpu_devices": ["0.0,0.1"],
      "status": "running",
      "image": "ds01/pytorch:latest",
      "detected_at": "2026-02-04T10:00:00Z"
    }
  },
  "host_processes": {
    "4242": {"pid": 4242, "user": "bob", "cmdline": "python train.py", "gpu_memory_mb": 2048, "gpu_uuid": "GPU-5d1c", "detected_at": "2026-02-04T10:29:00.5Z"}
  },
  "_pending_processes": {
    "4343": {"pid": 4343, "user": "carol", "cmdline": "python x.py", "gpu_memory_mb": 10, "gpu_uuid": "GPU-5d1c"}
  }
}`

func TestLoadReferenceFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(p, []byte(referenceFile), 0o644)
	st, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	c := st.Containers["abc123def456"]
	if c.User != "alice" || !c.HasGPU || c.DetectedAt.String() != "2026-02-04T10:00:00Z" {
		t.Errorf("container %+v", c)
	}
	if hp := st.HostProcesses["4242"]; hp.Pid != 4242 || *hp.GPUMemoryMB != 2048 || hp.DetectedAt.String() != "2026-02-04T10:29:00.500000Z" {
		t.Errorf("host process %+v", hp)
	}
	if _, ok := st.PendingProcesses["4343"]; !ok || st.SchemaVersion != inventory.SchemaVersion {
		t.Errorf("pending or schema wrong: %+v", st)
	}
}

func TestLoadMissingIsEmpty(t *testing.T) {
	st, err := Load(filepath.Join(t.TempDir(), "none.json"))
	if err != nil || len(st.Containers) != 0 || st.Containers == nil {
		t.Fatal(st, err)
	}
}

func TestLoadCorruptMovesAside(t *testing.T) {
	for name, body := range map[string]string{
		"torn":           referenceFile[:200],
		"list":           `[1,2]`,
		"unknown schema": `{"schema_version": 0, "containers": {}}`,
		"wrong type":     `{"containers": {"a": {"id": 5}}}`,
		"key mismatch":   `{"containers": {"a": {"id": "b"}}}`,
		"no containers":  `{"last_scan": null}`,
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "s.json")
		os.WriteFile(p, []byte(body), 0o644)
		st, err := Load(p)
		if err == nil || len(st.Containers) != 0 {
			t.Errorf("%s: err %v, state %+v", name, err, st)
			continue
		}
		aside, _ := filepath.Glob(p + ".corrupt-*")
		if len(aside) != 1 {
			t.Errorf("%s: moved-aside files %v", name, aside)
			continue
		}
		if b, _ := os.ReadFile(aside[0]); string(b) != body {
			t.Errorf("%s: moved file changed", name)
		}
		if !strings.Contains(err.Error(), aside[0]) {
			t.Errorf("%s: error does not name the new path: %v", name, err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s: corrupt file still in place", name)
		}
	}
}

// A state file from a newer version is never moved aside or changed:
// Load reports it, CheckSchema refuses it.
func TestNewerSchemaIsLeftAlone(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	body := `{"schema_version": 99, "containers": {}, "future": [1]}`
	os.WriteFile(p, []byte(body), 0o644)
	if _, err := Load(p); !errors.Is(err, inventory.ErrNewerSchema) {
		t.Errorf("Load: %v", err)
	}
	if err := CheckSchema(p); !errors.Is(err, inventory.ErrNewerSchema) || !strings.Contains(err.Error(), "99") {
		t.Errorf("CheckSchema: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != body {
		t.Errorf("file changed: %q", b)
	}
	if aside, _ := filepath.Glob(p + ".corrupt-*"); len(aside) != 0 {
		t.Errorf("moved aside: %v", aside)
	}
	os.WriteFile(p, []byte(`{"schema_version": 2, "containers": {}}`), 0o644)
	if err := CheckSchema(p); err != nil {
		t.Errorf("current schema refused: %v", err)
	}
}

// One holder at a time: a second TakeLock fails at once naming the
// holder's PID; after Release it succeeds. A lock file someone else
// planted (a symlink) is replaced, not followed.
func TestLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.json")
	target := filepath.Join(dir, "victim")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, LockPath(p))
	l, err := TakeLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("the symlink's target was written: %q", b)
	}
	_, err = TakeLock(p)
	var held *HeldError
	if !errors.As(err, &held) || held.PID != os.Getpid() || !strings.Contains(err.Error(), fmt.Sprint("PID ", os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	l.Release()
	l2, err := TakeLock(p)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

func TestSaveRoundTripAndMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.json")
	st := inventory.Empty()
	st.LastScan = inventory.TimePtr(time.Date(2026, 2, 4, 10, 30, 0, 123456789, time.UTC))
	st.Containers["abc"] = inventory.Container{ID: "abc", Name: "ø\x1b", GPUDevices: []string{}, GPUAccess: []string{}}
	if err := Save(p, st, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), `"last_scan": "2026-02-04T10:30:00.123456Z"`) || !strings.Contains(string(b), `"name": "\u00f8\u001b"`) {
		t.Errorf("encoding: %s", b)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != Mode {
		t.Errorf("mode %v", fi.Mode())
	}
	got, err := Load(p)
	if err != nil || got.Containers["abc"].Name != "ø\x1b" {
		t.Fatal(got, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".s.json.tmp-*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func TestSaveFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.json")
	if err := Save(p, inventory.Empty(), ""); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	// A directory squatting on the name makes the rename fail after the
	// temporary file was written: the error must surface and the temp go.
	blocked := filepath.Join(dir, "blocked.json")
	os.MkdirAll(filepath.Join(blocked, "x"), 0o755)
	if err := WriteAtomic(blocked, []byte("new"), Mode); err == nil {
		t.Fatal("rename over a directory succeeded")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".blocked.json.tmp-*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
	if after, _ := os.ReadFile(p); string(before) != string(after) {
		t.Error("unrelated file changed")
	}
}

func TestCleanTemps(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.json")
	os.WriteFile(filepath.Join(dir, ".s.json.tmp-123"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "other"), nil, 0o600)
	CleanTemps(p)
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	all, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) != 1 || len(all) != 0 {
		t.Errorf("left %v %v", left, all)
	}
}

func TestSaveWithGroupIs0640(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatal(err)
	}
	if err := Save(p, inventory.Empty(), g.Name); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != GroupMode || int(fi.Sys().(*syscall.Stat_t).Gid) != os.Getgid() {
		t.Errorf("mode %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	if err := Save(p, inventory.Empty(), "no-such-group-ds01"); err == nil {
		t.Error("unknown group accepted")
	}
}

// The caching, streaming encoder writes exactly what Encode writes, cycle
// after cycle, as containers come, change and go.
func TestEncoderMatchesEncode(t *testing.T) {
	var enc Encoder
	st := inventory.Empty()
	now := inventory.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	st.LastScan = &now
	for step := 0; step < 7; step++ {
		st.Containers = maps.Clone(st.Containers) // each state afresh, as reconcile gives them
		switch step {
		case 1:
			for i := 0; i < 50; i++ {
				id := fmt.Sprintf("%012x", i)
				st.Containers[id] = inventory.Container{ID: id, Name: "n\u00f8\"\u202e" + id, User: "u", Status: "running", GPUDevices: []string{}, GPUAccess: []string{}, DetectedAt: now,
					UserSignals: []inventory.UserSignal{{Source: "label:ds01.user", User: "u"}}, GPUProcesses: []inventory.GPUProcess{}}
			}
		case 2:
			c := st.Containers[fmt.Sprintf("%012x", 7)]
			c.Status = "exited"
			st.Containers[c.ID] = c
		case 3:
			delete(st.Containers, fmt.Sprintf("%012x", 9))
			mb, pct := int64(5), 40
			c := st.Containers[fmt.Sprintf("%012x", 3)]
			c.GPUMemoryMB, c.GPUHeldSeconds = &mb, 30
			c.GPUProcesses = []inventory.GPUProcess{{Pid: 4, GPUUUID: "GPU-1", GPUMemoryMB: &mb, SMUtilPercent: &pct}}
			st.Containers[c.ID] = c
		case 4:
			st.HostProcesses["10"] = inventory.HostProcess{Pid: 10, User: "containers"}
			st.GPUs["GPU-1"] = inventory.GPU{Index: 1}
		case 5:
			c := st.Containers[fmt.Sprintf("%012x", 3)]
			pct := 41
			c.GPUProcesses = []inventory.GPUProcess{{Pid: 4, GPUUUID: "GPU-1", GPUMemoryMB: c.GPUMemoryMB, SMUtilPercent: &pct}}
			st.Containers[c.ID] = c
		case 6:
			st.Containers = map[string]inventory.Container{}
		}
		sameAsEncode(t, &enc, st, step)
	}
}

// Containers coming and going at random, several at a time, some at both
// ends of the key order: the encoder's incrementally kept key order must
// stay the sorted one.
func TestEncoderKeyOrderUnderChurn(t *testing.T) {
	var enc Encoder
	st := inventory.Empty()
	now := inventory.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	rnd := rand.New(rand.NewPCG(1, 2))
	for step := 0; step < 200; step++ {
		st.Containers = maps.Clone(st.Containers)
		for n := rnd.IntN(4); n > 0; n-- {
			id := fmt.Sprintf("%012x", rnd.IntN(64))
			if _, ok := st.Containers[id]; ok && rnd.IntN(2) == 0 {
				delete(st.Containers, id)
				continue
			}
			st.Containers[id] = inventory.Container{ID: id, Name: "c", Status: []string{"running", "exited"}[rnd.IntN(2)], DetectedAt: now,
				GPUDevices: []string{}, GPUAccess: []string{}, UserSignals: []inventory.UserSignal{}, GPUProcesses: []inventory.GPUProcess{}}
		}
		sameAsEncode(t, &enc, st, step)
	}
}

// SaveWith writes through writev, more than IOV_MAX pieces at a time here:
// the file must be exactly what Encode gives.
func TestSaveWithManyPieces(t *testing.T) {
	var enc Encoder
	st := inventory.Empty()
	now := inventory.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	for i := 0; i < 1500; i++ { // two pieces each
		id := fmt.Sprintf("%012x", i)
		st.Containers[id] = inventory.Container{ID: id, Name: "c", Status: "exited", DetectedAt: now,
			GPUDevices: []string{}, GPUAccess: []string{}, UserSignals: []inventory.UserSignal{}, GPUProcesses: []inventory.GPUProcess{}}
	}
	path := filepath.Join(t.TempDir(), "state.json")
	for round := 0; round < 2; round++ { // encoded, then cached
		if err := SaveWith(&enc, path, st, ""); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := Encode(st)
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: the file (%d bytes) differs from Encode (%d bytes)", round, len(got), len(want))
		}
	}
}

// sameAsEncode fails the test unless enc writes st exactly as Encode does.
func sameAsEncode(t *testing.T, enc *Encoder, st inventory.State, step int) {
	t.Helper()
	want, err := Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := enc.Write(&got, st); err != nil {
		t.Fatal(err)
	}
	if got.String() != string(want) {
		t.Fatalf("step %d differs:\n%s\n---\n%s", step, got.String(), want)
	}
}

// The encoder's sealed file is the plain encoding with the seal member
// SealState would add, cycle after cycle of the cached encodings; a key
// that does not match refuses it.
func TestEncoderSeals(t *testing.T) {
	key := seal.NewKey(bytes.Repeat([]byte{3}, seal.KeySize))
	enc := Encoder{Key: key}
	st := inventory.Empty()
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("%012d", i)
		st.Containers[id] = inventory.Container{ID: id, Name: fmt.Sprint("c", i), GPUDevices: []string{}, GPUAccess: []string{}}
		var b bytes.Buffer
		if err := enc.Write(&b, st); err != nil {
			t.Fatal(err)
		}
		plain, err := Encode(st)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := key.SealState(plain)
		if !bytes.Equal(b.Bytes(), want) {
			t.Fatalf("cycle %d: sealed encoding differs:\n%s\nwant\n%s", i, b.Bytes(), want)
		}
		if got, err := key.OpenState(b.Bytes()); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("cycle %d: open: %v", i, err)
		}
		if _, err := inventory.Parse(b.Bytes()); err != nil {
			t.Fatalf("a sealed state does not parse: %v", err)
		}
	}
}
