package activity

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// tree writes files (path → contents) under a temporary root.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, s := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const netDev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  999999      10    0    0    0     0          0         0   999999      10    0    0    0     0       0          0
  eth0: 1000       5    0    0    0     0          0         0     2000       5    0    0    0     0       0          0
  eth1:  300       5    0    0    0     0          0         0      400       5    0    0    0     0       0          0
`

func i64(p *int64) string {
	if p == nil {
		return "null"
	}
	return strconv.FormatInt(*p, 10)
}

func u64(p *uint64) string {
	if p == nil {
		return "null"
	}
	return strconv.FormatUint(*p, 10)
}

func got(s Sample) string {
	return strings.Join([]string{"cpu=" + u64(s.CPUNanos), "mem=" + i64(s.MemoryBytes), "rd=" + i64(s.ReadBytes), "wr=" + i64(s.WriteBytes),
		"rx=" + i64(s.RxBytes), "tx=" + i64(s.TxBytes)}, " ")
}

func TestLayouts(t *testing.T) {
	v2dir := "system.slice/ds01-alice.slice/ds01-alice-proj.slice/docker-" + id + ".scope"
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{
			name: "v2 systemd driver under nested ds01 slices",
			files: map[string]string{
				"proc/42/cgroup":                      "0::/" + v2dir + "\n",
				"proc/42/net/dev":                     netDev,
				"cg/" + v2dir + "/cpu.stat":           "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
				"cg/" + v2dir + "/memory.current":     "104857600\n",
				"cg/" + v2dir + "/memory.stat":        "anon 1\nfile 3\nactive_file 5\ninactive_file 4857600\n",
				"cg/" + v2dir + "/io.stat":            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=1 wbytes=2 rios=1 wios=1\n",
				"cg/system.slice/cpu.stat":            "usage_usec 99999999\n",
				"cg/system.slice/ds01-alice.slice/io": "",
			},
			want: "cpu=2500000000 mem=100000000 rd=4097 wr=8194 rx=1300 tx=2400",
		},
		{
			name: "v2 cgroupfs driver, no io controller: memory and io unknown",
			files: map[string]string{
				"proc/42/cgroup":                   "0::/docker/" + id + "\n",
				"proc/42/net/dev":                  netDev,
				"cg/docker/" + id + "/cpu.stat":    "usage_usec 7\n",
				"cg/docker/" + id + "/memory.stat": "inactive_file 1\n",
			},
			want: "cpu=7000 mem=null rd=null wr=null rx=1300 tx=2400",
		},
		{
			name: "v1 cgroupfs, controllers co-mounted as cpu,cpuacct, hybrid 0:: line ignored",
			files: map[string]string{
				"proc/42/cgroup":  "12:blkio:/docker/" + id + "\n4:memory:/docker/" + id + "\n3:cpu,cpuacct:/docker/" + id + "\n0::/docker/" + id + "\n",
				"proc/42/net/dev": netDev,
				"cg/cpu,cpuacct/docker/" + id + "/cpuacct.usage":                       "123456789\n",
				"cg/memory/docker/" + id + "/memory.usage_in_bytes":                    "5000\n",
				"cg/memory/docker/" + id + "/memory.stat":                              "cache 10\ninactive_file 1\ntotal_inactive_file 1000\n",
				"cg/blkio/docker/" + id + "/blkio.throttle.io_service_bytes_recursive": "8:0 Read 100\n8:0 Write 200\n8:0 Sync 300\n8:0 Total 300\n8:16 Read 1\nTotal 301\n",
				"cg/blkio/docker/" + id + "/blkio.throttle.io_service_bytes":           "8:0 Read 999\n",
				"cg/unified/docker/" + id + "/cpu.stat":                                "usage_usec 1\n",
			},
			want: "cpu=123456789 mem=4000 rd=101 wr=200 rx=1300 tx=2400",
		},
		{
			name: "v1 systemd driver, controllers mounted one per directory",
			files: map[string]string{
				"proc/42/cgroup":  "2:cpuacct:/system.slice/docker-" + id + ".scope\n4:memory:/system.slice/docker-" + id + ".scope\n",
				"proc/42/net/dev": netDev,
				"cg/cpuacct/system.slice/docker-" + id + ".scope/cpuacct.usage":        "5\n",
				"cg/memory/system.slice/docker-" + id + ".scope/memory.usage_in_bytes": "10\n",
				"cg/memory/system.slice/docker-" + id + ".scope/memory.stat":           "total_inactive_file 20\n",
			},
			want: "cpu=5 mem=0 rd=null wr=null rx=1300 tx=2400",
		},
		{
			name: "a path that climbs out of the root stays under it",
			files: map[string]string{
				"proc/42/cgroup":   "0::/../../etc\n",
				"cg/etc/cpu.stat":  "usage_usec 3\n",
				"proc/42/net/dev":  "garbage\n",
				"etc/cpu.stat":     "usage_usec 4\n",
				"cg/../x/cpu.stat": "usage_usec 5\n",
			},
			want: "cpu=3000 mem=null rd=null wr=null rx=null tx=null",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := tree(t, tc.files)
			r := New(filepath.Join(root, "proc"), filepath.Join(root, "cg"))
			at := time.Unix(100, 0)
			out := r.Read([]Container{{ID: id, Pid: 42}}, func() time.Time { return at })
			s, ok := out[id]
			if !ok {
				t.Fatal("no sample")
			}
			if g := got(s); g != tc.want {
				t.Errorf("got  %s\nwant %s", g, tc.want)
			}
			if !s.At.Equal(at) || s.Pid != 42 {
				t.Errorf("sample at %v pid %d", s.At, s.Pid)
			}
		})
	}
}

func TestGoneProcessAndForgetting(t *testing.T) {
	root := tree(t, map[string]string{
		"proc/42/cgroup":                "0::/docker/" + id + "\n",
		"cg/docker/" + id + "/cpu.stat": "usage_usec 7\n",
	})
	r := New(filepath.Join(root, "proc"), filepath.Join(root, "cg"))
	now := time.Now
	if out := r.Read([]Container{{ID: id, Pid: 42}, {ID: "gone", Pid: 77}, {ID: "stopped"}}, now); len(out) != 1 {
		t.Fatalf("samples %v, want only the running container whose process exists", out)
	}
	if len(r.dirs) != 1 {
		t.Fatalf("cache %v", r.dirs)
	}
	r.Read(nil, now)
	if len(r.dirs) != 0 {
		t.Fatalf("cache not emptied: %v", r.dirs)
	}
}

func TestHostNetworkIsUnknown(t *testing.T) {
	// A container in the host's network namespace would report the host's
	// traffic as its own: the network is unknown. The test's own process
	// stands in for both: PID 1 and the container's init share a namespace.
	self := os.Getpid()
	root := t.TempDir()
	proc := filepath.Join(root, "proc")
	os.MkdirAll(proc, 0o755)
	os.Symlink("/proc/"+strconv.Itoa(self), filepath.Join(proc, "42"))
	os.Symlink("/proc/"+strconv.Itoa(self), filepath.Join(proc, "self"))
	r := New(proc, "/sys/fs/cgroup")
	s := r.Read([]Container{{ID: id, Pid: 42}}, time.Now)[id]
	if !s.HostNetwork || s.RxBytes != nil || s.TxBytes != nil {
		t.Fatalf("host network %v rx %s tx %s", s.HostNetwork, i64(s.RxBytes), i64(s.TxBytes))
	}
	// Where the namespace links cannot be read (no CAP_SYS_PTRACE), Docker's
	// --network host says it.
	os.Remove(filepath.Join(proc, "self"))
	r = New(proc, "/sys/fs/cgroup")
	if s := r.Read([]Container{{ID: id, Pid: 42}}, time.Now)[id]; s.HostNetwork || s.RxBytes == nil {
		t.Fatalf("own namespace unknown, not --network host: host network %v rx %s", s.HostNetwork, i64(s.RxBytes))
	}
	if s := r.Read([]Container{{ID: id, Pid: 42, HostNetwork: true}}, time.Now)[id]; !s.HostNetwork || s.RxBytes != nil {
		t.Fatalf("--network host: host network %v rx %s", s.HostNetwork, i64(s.RxBytes))
	}
}

func TestProcessCPU(t *testing.T) {
	line := "1234 (a) b) c) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 99887 0 0\n"
	ticks, start, ok := ProcessCPU([]byte(line))
	if !ok || ticks != 300 || start != 99887 {
		t.Fatalf("ticks %d start %d ok %v", ticks, start, ok)
	}
	if _, _, ok := ProcessCPU([]byte("1234 (x) R 1")); ok {
		t.Fatal("short line accepted")
	}
}
