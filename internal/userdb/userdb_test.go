package userdb

import (
	"context"
	"errors"
	"os/user"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestCacheIsBoundedLRU(t *testing.T) {
	d := New(time.Hour)
	d.Size = 3
	var calls atomic.Int32
	d.lookup = func(id string) (*user.User, error) {
		calls.Add(1)
		return &user.User{Username: "u" + id}, nil
	}
	ctx := context.Background()
	for _, uid := range []uint32{1, 2, 3, 1, 4} { // 4 evicts 2, the least recently used
		if n, ok := d.Lookup(ctx, uid); !ok || n == "" {
			t.Fatalf("lookup %d: %q %v", uid, n, ok)
		}
	}
	if d.Len() != 3 || calls.Load() != 4 {
		t.Fatalf("len %d, calls %d", d.Len(), calls.Load())
	}
	d.Lookup(ctx, 1)
	d.Lookup(ctx, 3)
	if calls.Load() != 4 {
		t.Errorf("cached UIDs looked up again: %d calls", calls.Load())
	}
	d.Lookup(ctx, 2)
	if calls.Load() != 5 {
		t.Errorf("evicted UID not looked up again: %d calls", calls.Load())
	}
	for i := uint32(100); i < 10000; i++ {
		d.Lookup(ctx, i)
	}
	if d.Len() != 3 {
		t.Errorf("cache grew to %d", d.Len())
	}
}

// In a synctest bubble: the scans' deadlines pass on the bubble's clock,
// and synctest.Wait returns once the late answer has been stored.
func TestHungLookupIsBoundedByTheContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := New(time.Hour)
		release := make(chan struct{})
		var calls atomic.Int32
		d.lookup = func(string) (*user.User, error) {
			calls.Add(1)
			<-release
			return nil, errors.New("no such user")
		}
		for i := 0; i < 5; i++ { // five scans while NSS hangs: one lookup in flight
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			if _, ok := d.Lookup(ctx, 42); ok {
				t.Fatal("an answer from a hung lookup")
			}
			cancel()
		}
		if calls.Load() != 1 {
			t.Errorf("%d lookups in flight for one UID, want 1", calls.Load())
		}
		close(release)
		synctest.Wait()
		if d.Len() != 1 {
			t.Errorf("%d entries after the late answer, want 1", d.Len())
		}
		if _, ok := d.Lookup(context.Background(), 42); ok || calls.Load() != 1 {
			t.Errorf("the late answer was not cached: ok=%v calls=%d", ok, calls.Load())
		}
	})
}
