package classify

import (
	"strings"
	"testing"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

func FuzzUserAndLabels(f *testing.F) {
	f.Add("alice", "", "/home/h.baker@hertie-school.lan/x", "/home/carol/app", "/home/dave/src", "proj._.1001", "true", "0.0,0.1")
	f.Add("", "old", `C:\Users\x`, "/home/../etc", "/home/", "x._.abc", "True", "")
	f.Add("\n\x1b[31m", "\xff", "/home//x", "/home/./y", "/homex/z", "._.", "", ",,,")
	f.Fuzz(func(t *testing.T, dsUser, mlc, folder, composeDir, bind, name, managed, alloc string) {
		labels := map[string]string{}
		for k, v := range map[string]string{"ds01.user": dsUser, "aime.mlc.USER": mlc, "devcontainer.local_folder": folder,
			"com.docker.compose.project.working_dir": composeDir, "ds01.managed": managed, "ds01.gpu.allocated": alloc} {
			if v != "" {
				labels[k] = v
			}
		}
		in := Input{Name: name, Labels: labels, Mounts: []Mount{{Type: "bind", Source: bind}}}
		u, src := User(in, func(uid uint32) (string, bool) { return "u" + string(rune('0'+uid%10)), uid < 5000 })
		switch src {
		case SourceLabelUser, SourceLabelMLC:
		case SourceLocalFolder, SourceComposeDir, SourceBindMount:
			if u == "" || strings.Contains(u, "/") || u == "." || u == ".." {
				t.Fatalf("path user %q from %s", u, src)
			}
		case SourceNameUID, SourceProcessOwner:
			if u == "" {
				t.Fatal("empty resolved user")
			}
		case SourceNone:
			if u != Unknown {
				t.Fatalf("none gives %q", u)
			}
		default:
			t.Fatalf("unknown source %q", src)
		}
		switch o := Origin(labels, name); o {
		case inventory.OriginManaged:
			if managed != "true" {
				t.Fatalf("managed with %q", managed)
			}
		case inventory.OriginDevcontainer, inventory.OriginCompose, inventory.OriginRawDocker:
		default:
			t.Fatalf("origin %q", o)
		}
		for _, d := range GPUDevices(in, true) {
			if d == "" || strings.Contains(d, ",") || strings.TrimSpace(d) != d {
				t.Fatalf("device %q from %q", d, alloc)
			}
		}
	})
}
