package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.uber.org/zap"

	"github.com/ds01/ds01-detectord/internal/logging"
)

// DefaultPort is the endpoint's port unless --web.listen-address says
// otherwise (docs/METRICS.md says why this one).
const DefaultPort = "19400"

// DefaultListenAddress is loopback only: the labels carry user and
// container names.
const DefaultListenAddress = "127.0.0.1:" + DefaultPort

// Web is how the endpoint is served: the exporter-toolkit's
// --web.listen-address and --web.config.file.
type Web struct {
	// ListenAddresses are opened at once; an empty list serves nothing.
	ListenAddresses []string
	// ConfigFile is the exporter-toolkit web configuration (TLS, basic
	// auth, headers); "" serves plain HTTP without authentication.
	ConfigFile string
	// MaxConnections caps the connections served at once; those over it
	// are closed as soon as they are accepted. 0: DefaultMaxConnections.
	// It is lowered to leave ReserveFiles descriptors free
	// (FitConnections).
	MaxConnections int
}

// Listen checks the web configuration, opens every address at once, so
// that a bad file or a bad or taken address fails at startup, and serves
// /metrics and a landing page at / on them in the background, through the
// exporter-toolkit (TLS and basic auth from the web configuration). Closing
// the listeners stops the serving.
//
// The toolkit's messages go to log (nil: nowhere) through the slog bridge
// (logging.WebLogger): the HTTP server's own errors (TLS handshakes that
// fail, clients that go away) at debug level, so that they do not fill the
// journal.
func (m *Metrics) Listen(w Web, zlog *zap.Logger) ([]net.Listener, error) {
	if zlog == nil {
		zlog = zap.NewNop()
	}
	log := logging.WebLogger(zlog)
	if w.ConfigFile != "" {
		if err := web.Validate(w.ConfigFile); err != nil {
			return nil, fmt.Errorf("web configuration %s: %w", w.ConfigFile, err)
		}
	}
	handler, err := m.handler()
	if err != nil {
		return nil, err
	}
	want := w.MaxConnections
	if want <= 0 {
		want = DefaultMaxConnections
	}
	// The cap is shared by every address: it protects one descriptor table.
	limit, lowered := FitConnections(want)
	if lowered {
		log.Warn("--web.max-connections lowered to keep descriptors for the daemon's own files; raise LimitNOFILE", "wanted", want, "max_connections", limit)
	}
	shared := &connLimit{max: int64(limit)}
	var lns []net.Listener
	for _, addr := range w.ListenAddresses {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, &limitListener{Listener: ln, l: shared})
	}
	systemd := false
	flags := &web.FlagConfig{WebListenAddresses: &w.ListenAddresses, WebSystemdSocket: &systemd, WebConfigFile: &w.ConfigFile}
	for _, ln := range lns {
		// One server per listener: web.Serve wraps the server's handler.
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: m.ReadHeaderTimeout, ReadTimeout: m.ReadTimeout,
			WriteTimeout: m.WriteTimeout, IdleTimeout: m.IdleTimeout, MaxHeaderBytes: 64 << 10,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		go func() {
			err := web.Serve(ln, srv, flags, log)
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics endpoint stopped", "address", ln.Addr().String(), "err", err)
			}
		}()
	}
	return lns, nil
}

// handler serves /metrics and the landing page.
func (m *Metrics) handler() (http.Handler, error) {
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "ds01-detectord",
		Description: "Workloads (containers, host GPU processes), their owners and their GPU use on this DS01 GPU server",
		Links:       []web.LandingLinks{{Address: "/metrics", Text: "Metrics"}},
		Version:     m.version,
		Profiling:   "false",
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.Handle("/", landing)
	return mux, nil
}

// Exposed reports the listeners that other hosts can reach: not bound to a
// loopback address (":19400" and "0.0.0.0:19400" are every address; a
// Docker bridge IP reaches every container).
func Exposed(lns []net.Listener) []string {
	var out []string
	for _, ln := range lns {
		a, ok := ln.Addr().(*net.TCPAddr)
		if !ok || !a.IP.IsLoopback() {
			out = append(out, ln.Addr().String())
		}
	}
	return out
}

// Addresses lists the listeners' addresses, comma-separated, for logs.
func Addresses(lns []net.Listener) string {
	var s []string
	for _, ln := range lns {
		s = append(s, ln.Addr().String())
	}
	return strings.Join(s, ",")
}
