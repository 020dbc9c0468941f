package metrics

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// keepAlive opens a connection and makes one keep-alive request on it;
// it reports whether the request was answered.
func keepAlive(t *testing.T, addr string) (net.Conn, bool) {
	t.Helper()
	c, ok, _ := request(addr)
	return c, ok
}

// request sends one keep-alive request and says whether it was served; err
// says why not (a timeout: the server left the client waiting).
func request(addr string) (net.Conn, bool, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil { // reset before the handshake was seen through
		return nopConn{}, false, nil
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		return c, false, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return c, false, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c, resp.StatusCode == 200, nil
}

// Connections over --web.max-connections are closed at once (the client
// is not left waiting in a queue), those under it are served, and a slot
// freed by a client is given to the next.
func TestConnectionCap(t *testing.T) {
	m := New("test")
	lns, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0", "127.0.0.1:0"}, MaxConnections: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var held []net.Conn
	for i := 0; i < 4; i++ { // over both addresses: the cap is shared
		c, ok := keepAlive(t, lns[i%2].Addr().String())
		if !ok {
			t.Fatalf("connection %d under the cap not served", i)
		}
		held = append(held, c)
	}
	for i := 0; i < 20; i++ {
		c, ok, err := request(lns[i%2].Addr().String())
		if ok {
			t.Fatalf("connection %d over the cap was served", 4+i)
		}
		if ne, isNet := err.(net.Error); isNet && ne.Timeout() {
			t.Fatalf("connection %d over the cap was left waiting instead of being closed: %v", 4+i, err)
		}
		c.Close()
	}
	held[0].Close()
	var c net.Conn
	ok := false
	for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
		c, ok = keepAlive(t, lns[0].Addr().String())
		c.Close()
	}
	if !ok {
		t.Fatal("a freed slot was not given to the next connection")
	}
	for _, c := range held[1:] {
		c.Close()
	}
}

// Idle keep-alive connections are closed after the idle timeout, so that
// clients that stop asking give their slots back.
func TestIdleConnectionsAreClosed(t *testing.T) {
	m := New("test")
	m.IdleTimeout = 300 * time.Millisecond
	lns, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0"}, MaxConnections: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lns[0].Close()
	c, ok := keepAlive(t, lns[0].Addr().String())
	if !ok {
		t.Fatal("not served")
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection not closed by the server: %v", err)
	}
	ok = false
	for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
		var c2 net.Conn
		c2, ok = keepAlive(t, lns[0].Addr().String())
		c2.Close()
	}
	if !ok {
		t.Fatal("the slot of the idle connection was not freed")
	}
}

// The cap is lowered to leave ReserveFiles descriptors free: with the
// descriptor limit at 1024, the default cap fits and a cap of 1,000 is
// lowered to 1024 - ReserveFiles.
func TestFitConnectionsKeepsAReserve(t *testing.T) {
	var saved unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	low := saved
	low.Cur = 1024
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &saved)
	if n, lowered := FitConnections(64); lowered || n != 64 {
		t.Errorf("FitConnections(64) = %d, %v under 1024 descriptors", n, lowered)
	}
	if n, lowered := FitConnections(1000); !lowered || n != 1024-ReserveFiles {
		t.Errorf("FitConnections(1000) = %d, %v under 1024 descriptors, want %d", n, lowered, 1024-ReserveFiles)
	}
}

type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }
