// Package userdb resolves numeric UIDs to user names through NSS (os/user
// built with cgo uses getpwuid_r, so LDAP and SSSD users resolve), with a
// small cache so that a cycle does not ask NSS twice for the same UID.
package userdb

import (
	"os/user"
	"strconv"
	"sync"
	"time"
)

// DB caches lookups for TTL.
type DB struct {
	TTL time.Duration

	mu    sync.Mutex
	cache map[uint32]entry
}

type entry struct {
	name string
	ok   bool
	at   time.Time
}

// New returns a DB whose answers are kept for ttl.
func New(ttl time.Duration) *DB { return &DB{TTL: ttl, cache: map[uint32]entry{}} }

// Lookup returns the user name of uid, and false when NSS does not know it.
func (d *DB) Lookup(uid uint32) (string, bool) {
	now := time.Now()
	d.mu.Lock()
	e, hit := d.cache[uid]
	d.mu.Unlock()
	if hit && now.Sub(e.at) < d.TTL {
		return e.name, e.ok
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	e = entry{at: now}
	if err == nil {
		e.name, e.ok = u.Username, true
	}
	d.mu.Lock()
	d.cache[uid] = e
	d.mu.Unlock()
	return e.name, e.ok
}
