package dockertest

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"sync"
)

// Proxy sits between a client and the private dockerd on its own unix
// socket. It counts the API requests by endpoint and can cut every
// connection (including the event stream) to simulate a broken link while
// dockerd itself keeps running.
type Proxy struct {
	Host string // unix:///…/proxy.sock

	srv *http.Server
	mu  sync.Mutex
	n   map[string]int
	cut bool
	in  map[*context.CancelFunc]struct{}
}

var versionPrefix = regexp.MustCompile(`^/v[0-9.]+`)

// Proxy starts a counting proxy in front of d.
func (d *Daemon) Proxy() (*Proxy, error) {
	sock := filepath.Join(d.Dir, "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	target := filepath.Join(d.Dir, "docker.sock")
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: "docker"})
			r.Out.Host = "docker"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", target)
		}},
		FlushInterval: -1, // stream events as they come
	}
	p := &Proxy{Host: "unix://" + sock, n: map[string]int{}, in: map[*context.CancelFunc]struct{}{}}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			http.Error(w, "proxy: link cut", http.StatusBadGateway)
			return
		}
		p.n[r.Method+" "+versionPrefix.ReplaceAllString(r.URL.Path, "")]++
		ctx, cancel := context.WithCancel(r.Context())
		p.in[&cancel] = struct{}{}
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			delete(p.in, &cancel)
			p.mu.Unlock()
			cancel()
		}()
		rp.ServeHTTP(w, r.WithContext(ctx))
	})}
	go p.srv.Serve(ln)
	return p, nil
}

// Counts returns the requests seen so far, by "METHOD /path", and resets
// them.
func (p *Proxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.n
	p.n = map[string]int{}
	return n
}

// Cut breaks every open request (the event stream among them) and refuses
// new ones until Mend.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.in {
		(*c)()
	}
	p.mu.Unlock()
}

// Mend lets requests through again.
func (p *Proxy) Mend() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Close stops the proxy.
func (p *Proxy) Close() { p.srv.Close() }
