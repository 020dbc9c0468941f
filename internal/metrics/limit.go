package metrics

import (
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DefaultMaxConnections is --web.max-connections' default: more than any
// number of Prometheus servers scraping at once, far below the
// descriptors the unit gives the daemon (LimitNOFILE).
const DefaultMaxConnections = 64

// ReserveFiles is the number of descriptors the endpoint never takes: the
// daemon's own files (state, event log, Docker socket, /proc reads, NVML)
// always find one free. See FitConnections.
const ReserveFiles = 256

// FitConnections returns how many connections the endpoint may hold at
// once, given the wanted cap and the process's descriptor limit (soft
// RLIMIT_NOFILE): want, lowered so that ReserveFiles descriptors stay free
// for the daemon's own files, and at least 1. The second result says it
// was lowered.
func FitConnections(want int) (int, bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return want, false
	}
	room := int64(rl.Cur) - ReserveFiles
	if int64(want) <= room {
		return want, false
	}
	return int(max(1, room)), true
}

// connLimit holds at most max accepted connections open at once, over
// every listener it wraps. A connection over the cap is closed as soon as
// it is accepted: it costs the daemon one descriptor for the time of an
// accept and a close, and the client sees the connection reset instead of
// a queue that never moves. (golang.org/x/net/netutil.LimitListener waits
// instead, leaving the refused connections in the kernel's backlog.)
type connLimit struct {
	max     int64
	open    atomic.Int64
	refused atomic.Uint64
}

// limitListener is one listener under a connLimit.
type limitListener struct {
	net.Listener
	l *connLimit
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.l.open.Add(1) > l.l.max {
			l.l.open.Add(-1)
			l.l.refused.Add(1)
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // a reset: no TIME_WAIT, no FIN handshake
			}
			c.Close()
			continue
		}
		return &limitConn{Conn: c, l: l.l}, nil
	}
}

type limitConn struct {
	net.Conn
	l    *connLimit
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
