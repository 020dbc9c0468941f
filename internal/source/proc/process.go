package proc

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/ds01/ds01-detectord/internal/facts"
)

// Container runtimes a cgroup path can name (internal/facts).
const (
	RuntimeDocker     = facts.RuntimeDocker
	RuntimePodman     = facts.RuntimePodman
	RuntimeContainerd = facts.RuntimeContainerd
	RuntimeCRIO       = facts.RuntimeCRIO
	RuntimeUnknown    = facts.RuntimeUnknown
)

// ContainerRef is the container a process lives in, read from its cgroup
// (internal/facts, which the reconcile step reads).
type ContainerRef = facts.ContainerRef

var (
	hex64    = `([0-9a-f]{64})`
	reBareID = regexp.MustCompile(`^` + hex64 + `$`)
	// reUserManager is a user's systemd manager: below it, the user
	// creates cgroups (delegation).
	reUserManager = regexp.MustCompile(`^user@[0-9]+\.service$`)
	reScopeName   = regexp.MustCompile(`^(docker|libpod|libpod-conmon|cri-containerd|nerdctl|crio|crio-conmon)-` + hex64 + `(\.scope)?$`)
	scopeRT       = map[string]string{
		"docker": RuntimeDocker, "libpod": RuntimePodman, "libpod-conmon": RuntimePodman,
		"cri-containerd": RuntimeContainerd, "nerdctl": RuntimeContainerd,
		"crio": RuntimeCRIO, "crio-conmon": RuntimeCRIO,
	}
)

// ParseCgroup finds the outermost container in the contents of a
// /proc/<pid>/cgroup file. It understands cgroup v1 (/docker/<id>), v2 with
// the systemd driver (…/docker-<id>.scope under any slice, ds01.slice
// parents included), v2 with the cgroupfs driver, podman (libpod-<id>),
// containerd and CRI-O scopes. Path components ending in .mount are not
// containers and are skipped. A nested container (docker in a
// devcontainer) resolves to the outermost ID, the one the host's Docker
// knows. Lines that are not hierarchy:controllers:path are ignored.
func ParseCgroup(b []byte) ContainerRef {
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		if ref, ok := parsePath(parts[2]); ok {
			ref.Hierarchy, ref.Full = parts[0], parts[2]
			return ref
		}
	}
	return ContainerRef{}
}

func parsePath(p string) (ContainerRef, bool) {
	segs := strings.Split(p, "/")
	var out ContainerRef
	found, userTree := false, false
	for i, seg := range segs {
		if seg == "" || strings.HasSuffix(seg, ".mount") {
			continue
		}
		if !found && reUserManager.MatchString(seg) {
			userTree = true
			continue
		}
		var ref ContainerRef
		if m := reScopeName.FindStringSubmatch(seg); m != nil {
			ref = ContainerRef{Runtime: scopeRT[m[1]], ID: m[2], Path: strings.Join(segs[:i+1], "/")}
		} else if m := reBareID.FindStringSubmatch(seg); m != nil {
			rt := RuntimeUnknown
			if i > 0 {
				switch segs[i-1] {
				case "docker":
					rt = RuntimeDocker
				case "libpod_parent":
					rt = RuntimePodman
				}
			}
			ref = ContainerRef{Runtime: rt, ID: m[1], Path: strings.Join(segs[:i+1], "/")}
		} else {
			continue
		}
		if !found {
			out, found = ref, true
			out.UserTree = userTree
		} else if len(out.Inner) < maxNested {
			out.Inner = append(out.Inner, ref)
		}
	}
	return out, found
}

// maxNested bounds the nested containers kept from one path.
const maxNested = 8

// Cgroup reads /proc/<pid>/cgroup and finds its container.
func (fs FS) Cgroup(pid int) (ContainerRef, error) {
	b, err := os.ReadFile(fs.path(pid, "cgroup"))
	if err != nil {
		return ContainerRef{}, err
	}
	return ParseCgroup(b), nil
}

// PidNS returns the PID namespace of pid ("pid:[4026531836]"). Reading it
// needs ptrace access to the process: without CAP_SYS_PTRACE only
// processes of the same UID can be read.
func (fs FS) PidNS(pid int) (string, error) {
	return os.Readlink(fs.path(pid, "ns/pid"))
}

// StartTime is field 22 of /proc/<pid>/stat: the process's start time in
// clock ticks since boot. With the PID, it identifies a process: a reused
// PID has another start time.
func (fs FS) StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fs.path(pid, "stat"))
	if err != nil {
		return 0, err
	}
	return ParseStatStartTime(b)
}

// ParseStatStartTime extracts the start time from a stat line. The command
// name (field 2) may hold spaces and parentheses, so fields are counted
// from the last ')'.
func ParseStatStartTime(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no ')' in %q", truncate(b))
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("stat: %d fields after the command, want ≥ 20", len(f))
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat start time: %w", err)
	}
	return v, nil
}

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// MaxCmdline caps the command lines the detector records, in bytes
// (internal/facts).
const MaxCmdline = facts.MaxCmdline

// Argv reads /proc/<pid>/cmdline as arguments, each with invalid UTF-8
// replaced by U+FFFD. It reads at most 4×MaxCmdline bytes. A kernel thread
// or a zombie has no arguments.
func (fs FS) Argv(pid int) ([]string, error) {
	f, err := os.Open(fs.path(pid, "cmdline"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, 4*MaxCmdline)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, err
	}
	return SplitCmdline(buf[:n]), nil
}

// SplitCmdline splits raw cmdline bytes on NUL.
func SplitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = strings.ToValidUTF8(string(p), "\uFFFD")
	}
	return out
}

// JoinCmdline joins arguments with spaces and caps the result at
// MaxCmdline bytes, on a rune boundary (facts.Cmdline).
func JoinCmdline(argv []string) string { return facts.Cmdline(argv) }
