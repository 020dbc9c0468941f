// Package userdb resolves numeric UIDs to user names through NSS (os/user
// built with cgo uses getpwuid_r, so LDAP and SSSD users resolve). Answers
// are kept in a bounded LRU cache for a TTL, and a lookup waits no longer
// than its context: a hung directory service cannot stall a scan. A lookup
// that ran out of time finishes in the background, at most one per UID,
// and fills the cache for a later scan.
package userdb

import (
	"container/list"
	"context"
	"os/user"
	"strconv"
	"sync"
	"time"
)

// DefaultSize bounds the cache: UIDs beyond it evict the least recently
// used.
const DefaultSize = 4096

// DB caches lookups for TTL.
type DB struct {
	TTL  time.Duration
	Size int

	mu       sync.Mutex
	entries  map[uint32]*list.Element
	order    *list.List // front: most recently used
	inflight map[uint32]chan struct{}

	// lookup is user.LookupId; tests replace it.
	lookup func(string) (*user.User, error)
}

type entry struct {
	uid  uint32
	name string
	ok   bool
	at   time.Time
}

// New returns a DB whose answers are kept for ttl, at most DefaultSize.
func New(ttl time.Duration) *DB {
	return &DB{TTL: ttl, Size: DefaultSize, entries: map[uint32]*list.Element{}, order: list.New(),
		inflight: map[uint32]chan struct{}{}, lookup: user.LookupId}
}

// Lookup returns the user name of uid, and false when NSS does not know it
// or did not answer before ctx ended.
func (d *DB) Lookup(ctx context.Context, uid uint32) (string, bool) {
	now := time.Now()
	d.mu.Lock()
	if el, hit := d.entries[uid]; hit {
		e := el.Value.(*entry)
		if now.Sub(e.at) < d.TTL {
			d.order.MoveToFront(el)
			d.mu.Unlock()
			return e.name, e.ok
		}
	}
	done, running := d.inflight[uid]
	if !running {
		done = make(chan struct{})
		d.inflight[uid] = done
		go d.resolve(uid, done)
	}
	d.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return "", false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if el, hit := d.entries[uid]; hit {
		e := el.Value.(*entry)
		return e.name, e.ok
	}
	return "", false
}

func (d *DB) resolve(uid uint32, done chan struct{}) {
	u, err := d.lookup(strconv.FormatUint(uint64(uid), 10))
	e := &entry{uid: uid, at: time.Now()}
	if err == nil {
		e.name, e.ok = u.Username, true
	}
	d.mu.Lock()
	if el, hit := d.entries[uid]; hit {
		el.Value = e
		d.order.MoveToFront(el)
	} else {
		d.entries[uid] = d.order.PushFront(e)
		for d.order.Len() > max(d.Size, 1) {
			old := d.order.Back()
			d.order.Remove(old)
			delete(d.entries, old.Value.(*entry).uid)
		}
	}
	delete(d.inflight, uid)
	d.mu.Unlock()
	close(done)
}

// Len is the number of cached UIDs.
func (d *DB) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.order.Len()
}
