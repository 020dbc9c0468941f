// Package classify turns the facts Docker reports about one container into
// the inventory's judgements: origin, GPU access, GPU devices and owner.
// Everything here is a pure function of its input; the caller gathers the
// facts (inspect data, the init process's UID) and passes them in.
package classify

import (
	"path"
	"strconv"
	"strings"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// DeviceRequest and Mount are what the Docker source reports.
type (
	DeviceRequest = facts.DeviceRequest
	Mount         = facts.Mount
)

// Input is everything classification needs to know about one container.
type Input struct {
	Name           string // without the leading slash
	Labels         map[string]string
	Env            []string // effective environment (the image's included)
	Runtime        string   // HostConfig.Runtime; "" means the daemon default
	NvidiaRuntime  bool     // true when Runtime (or the default, when empty) is an nvidia runtime
	DeviceRequests []DeviceRequest
	DevicePaths    []string // HostConfig.Devices[].PathOnHost
	Privileged     bool
	Mounts         []Mount
	// InitUID is the real UID of the container's init process, or nil when
	// the container is not running or the UID could not be read.
	InitUID *uint32
}

// Origin classifies how the container was started (docs/COMPAT.md).
func Origin(labels map[string]string, name string) string {
	if labels["ds01.managed"] == "true" {
		return inventory.OriginManaged
	}
	for k := range labels {
		if strings.HasPrefix(k, "devcontainer.") {
			return inventory.OriginDevcontainer
		}
	}
	if _, ok := labels["com.docker.compose.project"]; ok {
		return inventory.OriginCompose
	}
	if strings.HasPrefix(name, "vsc-") {
		return inventory.OriginDevcontainer
	}
	return inventory.OriginRawDocker
}

// visibleDevices returns NVIDIA_VISIBLE_DEVICES from env and whether it
// names any GPU. Unset, "", "void" and "none" name none.
func visibleDevices(env []string) (string, bool) {
	v, ok := "", false
	for _, kv := range env {
		if strings.HasPrefix(kv, "NVIDIA_VISIBLE_DEVICES=") {
			v, ok = strings.TrimPrefix(kv, "NVIDIA_VISIBLE_DEVICES="), true // last one wins, as in exec
		}
	}
	v = strings.TrimSpace(v)
	if !ok || v == "" || v == "void" || v == "none" {
		return v, false
	}
	return v, true
}

// IsNvidiaRuntime reports whether a runtime registered under name, running
// the binary at path, is the NVIDIA container runtime.
func IsNvidiaRuntime(name, binPath string) bool {
	if name == "nvidia" {
		return true
	}
	base := path.Base(binPath)
	return strings.HasPrefix(base, "nvidia-container-runtime")
}

func hasCapability(caps [][]string, want string) bool {
	for _, set := range caps {
		for _, c := range set {
			if c == want {
				return true
			}
		}
	}
	return false
}

func isCDINvidia(id string) bool { return strings.HasPrefix(id, "nvidia.com/gpu") }

// GPUAccess lists the mechanisms through which the container can reach a
// GPU, in a fixed order. An empty list means none.
func GPUAccess(in Input) []string {
	var out []string
	if _, named := visibleDevices(in.Env); in.NvidiaRuntime && named {
		out = append(out, inventory.AccessNvidiaRuntime)
	}
	devReq, cdi := false, false
	for _, r := range in.DeviceRequests {
		switch {
		case r.Driver == "cdi":
			for _, id := range r.DeviceIDs {
				if isCDINvidia(id) {
					cdi = true
				}
			}
		case r.Driver == "nvidia" || hasCapability(r.Capabilities, "gpu"):
			if r.Count != 0 || len(r.DeviceIDs) > 0 {
				devReq = true
			}
		}
	}
	devNode := false
	for _, p := range in.DevicePaths {
		switch {
		case strings.HasPrefix(p, "/dev/nvidia"):
			devNode = true
		case isCDINvidia(p): // docker ≥ 25 --device nvidia.com/gpu=all
			cdi = true
		}
	}
	if devReq {
		out = append(out, inventory.AccessDeviceRequest)
	}
	if cdi {
		out = append(out, inventory.AccessCDI)
	}
	if devNode {
		out = append(out, inventory.AccessDeviceNode)
	}
	if in.Privileged {
		out = append(out, inventory.AccessPrivileged)
	}
	if out == nil {
		out = []string{}
	}
	return out
}

// splitList splits a comma list, trimming blanks and dropping empty items.
func splitList(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// GPUDevices names the GPUs the container holds. Each GPU is one element: a
// comma list such as ds01.gpu.allocated="0.0,0.1" becomes ["0.0","0.1"]
// (the Python scanner kept it as one element, which made ds01-workloads count one
// GPU). Sources, first hit wins: the ds01.gpu.allocated slots, the first
// device request with DeviceIDs, NVIDIA_VISIBLE_DEVICES (only when the
// container has GPU access), else [].
func GPUDevices(in Input, hasGPU bool) []string {
	if v, ok := in.Labels["ds01.gpu.allocated"]; ok {
		if l := splitList(v); len(l) > 0 {
			return l
		}
	}
	for _, r := range in.DeviceRequests {
		if len(r.DeviceIDs) > 0 {
			var out []string
			for _, id := range r.DeviceIDs {
				out = append(out, splitList(id)...)
			}
			return out
		}
	}
	if v, named := visibleDevices(in.Env); named && hasGPU {
		return splitList(v)
	}
	return []string{}
}

// User attribution sources, as recorded in Container.UserSource. The
// values are public: pkg/inventory defines them.
const (
	SourceLabelUser    = inventory.UserSourceLabelUser
	SourceLabelMLC     = inventory.UserSourceLabelMLC
	SourceLocalFolder  = inventory.UserSourceLocalFolder
	SourceComposeDir   = inventory.UserSourceComposeDir
	SourceBindMount    = inventory.UserSourceBindMount
	SourceNameUID      = inventory.UserSourceNameUID
	SourceProcessOwner = inventory.UserSourceProcessOwner
	SourceNone         = inventory.UserSourceNone
	Unknown            = inventory.UnknownUser
)

// Resolver maps a numeric UID to a user name through NSS.
type Resolver func(uid uint32) (string, bool)

// homeUser returns <u> when p is /home/<u> or below it.
func homeUser(p string) (string, bool) {
	if !strings.HasPrefix(p, "/home/") {
		return "", false
	}
	rest := strings.TrimPrefix(path.Clean(p), "/home/")
	u, _, _ := strings.Cut(rest, "/")
	if u == "" || u == "." || u == ".." || p == "/home/" {
		return "", false
	}
	return u, true
}

// NameUID returns the UID a container name of the form <x>._.<uid> carries.
func NameUID(name string) (uint32, bool) {
	i := strings.LastIndex(name, "._.")
	if i <= 0 {
		return 0, false
	}
	uid, err := strconv.ParseUint(name[i+3:], 10, 32)
	return uint32(uid), err == nil
}

// Signals lists every owner signal the container carries, in precedence
// order: labels, then paths under /home, then the <x>._.<uid> name, then a
// non-root owner of the init process (a root-owned init process says
// nothing about the owner). Each is set by whoever started the container.
func Signals(in Input, resolve Resolver) []inventory.UserSignal {
	var out []inventory.UserSignal
	add := func(src, user string) { out = append(out, inventory.UserSignal{Source: src, User: user}) }
	if v, ok := in.Labels["ds01.user"]; ok {
		add(SourceLabelUser, v)
	}
	if v, ok := in.Labels["aime.mlc.USER"]; ok {
		add(SourceLabelMLC, v)
	}
	if u, ok := homeUser(in.Labels["devcontainer.local_folder"]); ok {
		add(SourceLocalFolder, u)
	}
	if u, ok := homeUser(in.Labels["com.docker.compose.project.working_dir"]); ok {
		add(SourceComposeDir, u)
	}
	seen := map[string]bool{}
	for _, m := range in.Mounts {
		if m.Type != "bind" {
			continue
		}
		if u, ok := homeUser(m.Source); ok && !seen[u] {
			seen[u] = true
			add(SourceBindMount, u)
		}
	}
	if uid, ok := NameUID(in.Name); ok && resolve != nil {
		if name, ok := resolve(uid); ok {
			add(SourceNameUID, name)
		}
	}
	if in.InitUID != nil && *in.InitUID != 0 {
		name, ok := "", false
		if resolve != nil {
			name, ok = resolve(*in.InitUID)
		}
		if !ok {
			name = strconv.FormatUint(uint64(*in.InitUID), 10)
		}
		add(SourceProcessOwner, name)
	}
	return out
}

// User decides who owns the container and which signal said so: the first
// of Signals, or "unknown".
func User(in Input, resolve Resolver) (user, source string) {
	return UserOf(Signals(in, resolve))
}

// UserOf is User for signals already gathered.
func UserOf(signals []inventory.UserSignal) (user, source string) {
	if len(signals) > 0 {
		return signals[0].User, signals[0].Source
	}
	return Unknown, SourceNone
}

// Conflict reports whether the signals name more than one user.
func Conflict(signals []inventory.UserSignal) bool {
	for _, s := range signals[min(1, len(signals)):] {
		if s.User != signals[0].User {
			return true
		}
	}
	return false
}
