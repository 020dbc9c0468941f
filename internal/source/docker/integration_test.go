//go:build integration

package docker

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/ds01/ds01-detectord/internal/dockertest"
	"github.com/ds01/ds01-detectord/internal/testbin"
)

// TestMain removes the programs the tests built (testbin).
func TestMain(m *testing.M) { testbin.Main(m) }

func TestListSkipsContainerRemovedMidScan(t *testing.T) {
	d := dockertest.New(t, dockertest.Options{})
	ctx := context.Background()
	keep, err := d.Create(ctx, dockertest.Spec{Name: "keep"})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := d.Create(ctx, dockertest.Spec{Name: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(d.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	removed := false
	s.afterList = func() {
		if err := d.Client.ContainerRemove(ctx, gone, container.RemoveOptions{}); err != nil {
			t.Errorf("remove: %v", err)
		}
		removed = true
	}
	got, err := s.List(ctx, true)
	if err != nil {
		t.Fatalf("a container removed mid-scan failed the list: %v", err)
	}
	if !removed || len(got.Containers) != 1 || got.Containers[0].ID != keep || got.Containers[0].Name != "keep" || got.Containers[0].Image != dockertest.Image {
		t.Fatalf("got %+v", got)
	}

	// A stalled daemon: every call has a deadline, and the list fails
	// rather than hang or come back empty.
	s.afterList = nil
	s.do(func(st *store) { st.runtimes = nil }) // force the info call too
	syscall.Kill(d.Pid(), syscall.SIGSTOP)
	defer syscall.Kill(d.Pid(), syscall.SIGCONT)
	s.callTimeout = 500 * time.Millisecond
	_, err = s.List(ctx, true)
	if err == nil || !strings.Contains(err.Error(), "docker info") || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("stalled daemon: err = %v", err)
	}
}
