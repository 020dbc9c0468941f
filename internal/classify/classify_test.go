package classify

import (
	"reflect"
	"testing"
)

func TestOrigin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		cname  string
		want   string
	}{
		{"managed", map[string]string{"ds01.managed": "true", "devcontainer.x": "1"}, "vsc-a", "ds01-managed"},
		{"managed True falls through", map[string]string{"ds01.managed": "True"}, "x", "raw-docker"},
		{"managed 1 falls through", map[string]string{"ds01.managed": "1", "com.docker.compose.project": "p"}, "x", "compose"},
		{"devcontainer label beats compose", map[string]string{"devcontainer.metadata": "{}", "com.docker.compose.project": "p"}, "x", "devcontainer"},
		{"legacy mlc", map[string]string{"aime.mlc.USER": "u", "devcontainer.workspaceFolder": "/w"}, "x", "devcontainer"},
		{"compose", map[string]string{"com.docker.compose.project": ""}, "x", "compose"},
		{"compose beats vsc name", map[string]string{"com.docker.compose.project": "p"}, "vsc-x", "compose"},
		{"vsc name", nil, "vsc-foo-123", "devcontainer"},
		{"raw", nil, "thing", "raw-docker"},
		{"devcontainer prefix only on keys", map[string]string{"x": "devcontainer.y"}, "a", "raw-docker"},
	} {
		if got := Origin(tc.labels, tc.cname); got != tc.want {
			t.Errorf("%s: Origin = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestGPUAccess(t *testing.T) {
	env := func(v string) []string { return []string{"PATH=/bin", "NVIDIA_VISIBLE_DEVICES=" + v} }
	for _, tc := range []struct {
		name string
		in   Input
		want []string
	}{
		{"nothing", Input{}, []string{}},
		{"null device requests and a device node", Input{DevicePaths: []string{"/dev/nvidia0"}}, []string{"device-node"}},
		{"nvidiactl counts as a device node", Input{DevicePaths: []string{"/dev/nvidiactl"}}, []string{"device-node"}},
		{"non-nvidia device", Input{DevicePaths: []string{"/dev/fuse"}}, []string{}},
		{"runtime with env", Input{NvidiaRuntime: true, Env: env("all")}, []string{"nvidia-runtime"}},
		{"runtime env empty", Input{NvidiaRuntime: true, Env: env("")}, []string{}},
		{"runtime env void", Input{NvidiaRuntime: true, Env: env("void")}, []string{}},
		{"runtime env none", Input{NvidiaRuntime: true, Env: env("none")}, []string{}},
		{"runtime no env", Input{NvidiaRuntime: true, Env: []string{"PATH=/bin"}}, []string{}},
		{"later env wins", Input{NvidiaRuntime: true, Env: append(env("all"), "NVIDIA_VISIBLE_DEVICES=void")}, []string{}},
		{"env without runtime", Input{Env: env("all")}, []string{}},
		{"gpus all", Input{DeviceRequests: []DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}}, []string{"device-request"}},
		{"driver nvidia", Input{DeviceRequests: []DeviceRequest{{Driver: "nvidia", Count: 1}}}, []string{"device-request"}},
		{"gpu capability in second set", Input{DeviceRequests: []DeviceRequest{{Count: 1, Capabilities: [][]string{{"compute"}, {"gpu", "utility"}}}}}, []string{"device-request"}},
		{"gpu capability as substring does not count", Input{DeviceRequests: []DeviceRequest{{Count: 1, Capabilities: [][]string{{"gpus"}}}}}, []string{}},
		{"count zero asks for nothing", Input{DeviceRequests: []DeviceRequest{{Driver: "nvidia"}}}, []string{}},
		{"device ids", Input{DeviceRequests: []DeviceRequest{{DeviceIDs: []string{"0"}, Capabilities: [][]string{{"gpu"}}}}}, []string{"device-request"}},
		{"other driver", Input{DeviceRequests: []DeviceRequest{{Driver: "amd", Count: -1}}}, []string{}},
		{"cdi request", Input{DeviceRequests: []DeviceRequest{{Driver: "cdi", DeviceIDs: []string{"nvidia.com/gpu=all"}}}}, []string{"cdi"}},
		{"cdi other vendor", Input{DeviceRequests: []DeviceRequest{{Driver: "cdi", DeviceIDs: []string{"vendor.com/fpga=0"}}}}, []string{}},
		{"cdi as device", Input{DevicePaths: []string{"nvidia.com/gpu=0"}}, []string{"cdi"}},
		{"privileged", Input{Privileged: true}, []string{"privileged"}},
		{"several, fixed order", Input{Privileged: true, NvidiaRuntime: true, Env: env("0"), DevicePaths: []string{"/dev/nvidia1"},
			DeviceRequests: []DeviceRequest{{Count: -1, Capabilities: [][]string{{"gpu"}}}}},
			[]string{"nvidia-runtime", "device-request", "device-node", "privileged"}},
	} {
		if got := GPUAccess(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: GPUAccess = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestIsNvidiaRuntime(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		want       bool
	}{
		{"nvidia", "runc", true},
		{"nv", "/usr/bin/nvidia-container-runtime", true},
		{"nv-cdi", "/usr/bin/nvidia-container-runtime.cdi", true},
		{"runc", "runc", false},
		{"", "", false},
	} {
		if got := IsNvidiaRuntime(tc.name, tc.path); got != tc.want {
			t.Errorf("IsNvidiaRuntime(%q,%q) = %v", tc.name, tc.path, got)
		}
	}
}

func TestGPUDevices(t *testing.T) {
	nv := func(v string) []string { return []string{"NVIDIA_VISIBLE_DEVICES=" + v} }
	req := func(ids ...string) []DeviceRequest { return []DeviceRequest{{Count: 0}, {DeviceIDs: ids}} }
	for _, tc := range []struct {
		name   string
		in     Input
		hasGPU bool
		want   []string
	}{
		{"label single", Input{Labels: map[string]string{"ds01.gpu.allocated": "1.2"}}, true, []string{"1.2"}},
		{"label comma list splits", Input{Labels: map[string]string{"ds01.gpu.allocated": "0.0, 0.1"}}, true, []string{"0.0", "0.1"}},
		{"label beats requests", Input{Labels: map[string]string{"ds01.gpu.allocated": "0"}, DeviceRequests: req("GPU-x")}, true, []string{"0"}},
		{"empty label falls through", Input{Labels: map[string]string{"ds01.gpu.allocated": ""}, DeviceRequests: req("GPU-x")}, true, []string{"GPU-x"}},
		{"first request with ids", Input{DeviceRequests: req("MIG-a", "MIG-b")}, true, []string{"MIG-a", "MIG-b"}},
		{"request beats env", Input{DeviceRequests: req("0"), Env: nv("1")}, true, []string{"0"}},
		{"env list", Input{Env: nv("MIG-a,MIG-b")}, true, []string{"MIG-a", "MIG-b"}},
		{"env all", Input{Env: nv("all")}, true, []string{"all"}},
		{"env void", Input{Env: nv("void")}, true, []string{}},
		{"env ignored without access", Input{Env: nv("all")}, false, []string{}},
		{"nothing", Input{}, true, []string{}},
	} {
		if got := GPUDevices(tc.in, tc.hasGPU); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: GPUDevices = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestUser(t *testing.T) {
	uid := func(u uint32) *uint32 { return &u }
	resolve := func(u uint32) (string, bool) {
		switch u {
		case 1001:
			return "alice", true
		case 1002:
			return "bob", true
		}
		return "", false
	}
	for _, tc := range []struct {
		name       string
		in         Input
		user, from string
	}{
		{"ds01.user", Input{Labels: map[string]string{"ds01.user": "alice", "aime.mlc.USER": "x"}}, "alice", SourceLabelUser},
		{"ds01.user empty still wins", Input{Labels: map[string]string{"ds01.user": ""}}, "", SourceLabelUser},
		{"mlc", Input{Labels: map[string]string{"aime.mlc.USER": "old"}}, "old", SourceLabelMLC},
		{"local folder", Input{Labels: map[string]string{"devcontainer.local_folder": "/home/h.baker@hertie-school.lan/x"}}, "h.baker@hertie-school.lan", SourceLocalFolder},
		{"local folder is home itself", Input{Labels: map[string]string{"devcontainer.local_folder": "/home/zed"}}, "zed", SourceLocalFolder},
		{"local folder windows", Input{Labels: map[string]string{"devcontainer.local_folder": `C:\Users\x`}}, "unknown", SourceNone},
		{"local folder not home", Input{Labels: map[string]string{"devcontainer.local_folder": "/srv/x"}}, "unknown", SourceNone},
		{"local folder dotdot", Input{Labels: map[string]string{"devcontainer.local_folder": "/home/../etc"}}, "unknown", SourceNone},
		{"compose dir", Input{Labels: map[string]string{"com.docker.compose.project.working_dir": "/home/carol/app"}}, "carol", SourceComposeDir},
		{"local folder beats compose", Input{Labels: map[string]string{"devcontainer.local_folder": "/home/a/x", "com.docker.compose.project.working_dir": "/home/b/y"}}, "a", SourceLocalFolder},
		{"bind mount", Input{Mounts: []Mount{{Type: "volume", Source: "/home/vol/x"}, {Type: "bind", Source: "/home/dave/src"}}}, "dave", SourceBindMount},
		{"bind outside home", Input{Mounts: []Mount{{Type: "bind", Source: "/data/x"}}}, "unknown", SourceNone},
		{"name uid", Input{Name: "proj._.1001"}, "alice", SourceNameUID},
		{"name uid unresolvable falls through", Input{Name: "proj._.4242", InitUID: uid(1002)}, "bob", SourceProcessOwner},
		{"name uid not numeric", Input{Name: "proj._.abc"}, "unknown", SourceNone},
		{"bind beats name", Input{Name: "p._.1001", Mounts: []Mount{{Type: "bind", Source: "/home/dave/x"}}}, "dave", SourceBindMount},
		{"non-root init", Input{InitUID: uid(1002)}, "bob", SourceProcessOwner},
		{"non-root init unresolvable keeps the number", Input{InitUID: uid(5555)}, "5555", SourceProcessOwner},
		{"root init is no evidence", Input{InitUID: uid(0)}, "unknown", SourceNone},
		{"not running", Input{}, "unknown", SourceNone},
	} {
		u, s := User(tc.in, resolve)
		if u != tc.user || s != tc.from {
			t.Errorf("%s: User = (%q, %q), want (%q, %q)", tc.name, u, s, tc.user, tc.from)
		}
	}
}
