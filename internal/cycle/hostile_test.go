//go:build integration

package cycle

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/internal/textcut"
	"github.com/ds01/ds01-detectord/pkg/event"
)

func TestHugeAndHostileLabels(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	huge := strings.Repeat("ü", 512*1024) // 1 MB of UTF-8
	hostile := "eve\n2026-01-01T00:00:00Z INFO forged\x1b[2J\x00\u2028"
	bigID, err := d.Create(ctx, dockertest.Spec{Name: "huge", Labels: map[string]string{"ds01.user": huge, "note": huge}})
	if err != nil {
		t.Fatal(err)
	}
	evilID, err := d.Create(ctx, dockertest.Spec{Name: "hostile", Labels: map[string]string{"ds01.user": hostile, "devcontainer.x\x1b": "\xff\xfe"}})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, d)
	r.cycle()
	raw, err := os.ReadFile(r.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range raw {
		if c >= 0x80 || (c < 0x20 && c != '\n') {
			t.Fatalf("raw byte %#x in the state file", c)
		}
	}
	st := r.State()
	// A megabyte of label is cut to MaxValueBytes, marked; the hostile one
	// is kept as data, byte for byte.
	big := st.Containers[bigID[:12]]
	if len(big.User) > textcut.MaxValueBytes || !strings.HasSuffix(big.User, textcut.Marker) || !strings.HasPrefix(huge, strings.TrimSuffix(big.User, textcut.Marker)) {
		t.Errorf("huge user stored as %d bytes", len(big.User))
	}
	if st.Containers[evilID[:12]].User != hostile {
		t.Error("hostile user not kept as data")
	}
	if fi, _ := os.Stat(r.StatePath); fi.Size() > 64<<10 {
		t.Errorf("state file of %d bytes for two containers", fi.Size())
	}
	if st.Containers[evilID[:12]].Origin != "devcontainer" {
		t.Errorf("origin %q", st.Containers[evilID[:12]].Origin)
	}
	evs := testutil.ReadLog(t, r.EventsPath)
	if len(evs) != 2 {
		t.Fatalf("%d event lines", len(evs))
	}
	for _, e := range evs {
		if len(e.Raw) > event.MaxLineBytes {
			t.Errorf("event line of %d bytes", len(e.Raw))
		}
		switch {
		case strings.Contains(string(e.Details), bigID[:12]):
			if e.User != big.User {
				t.Errorf("huge user in the event: %d bytes", len(e.User))
			}
		default:
			if e.User != hostile {
				t.Errorf("hostile user came back %q", e.User)
			}
		}
	}
}
