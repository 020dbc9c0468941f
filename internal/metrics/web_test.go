package metrics

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/crypto/bcrypt"

	"github.com/ds01/ds01-detectord/internal/summary"
	"github.com/ds01/ds01-detectord/internal/testutil"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir and returns the pool that trusts it.
func selfSigned(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ds01-detectord test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cert.pem", "CERTIFICATE", der)
	write("key.pem", "EC PRIVATE KEY", kb)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

// With the exporter-toolkit's web configuration (the file the README
// shows: TLS and basic auth), the endpoint answers only over TLS and only
// with the right credentials; without one, plain HTTP as before.
func TestTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	pool := selfSigned(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "web.yml")
	// Relative paths are relative to the file, as the toolkit documents.
	if err := os.WriteFile(conf, []byte("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := New("test")
	m.Observe(summary.Summary{State: inventory.Empty()})
	var logs testutil.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logs), zapcore.DebugLevel))
	lns, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0"}, ConfigFile: conf}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer lns[0].Close()
	addr := lns[0].Addr().String()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(c *http.Client, url, user, pass string) (int, string, error) {
		req, _ := http.NewRequest("GET", url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}

	code, body, err := get(client, "https://"+addr+"/metrics", "prometheus", "s3cret")
	if err != nil || code != 200 || !strings.Contains(body, "ds01_detector_source_up{") {
		t.Errorf("right credentials: %d %v\n%.300s", code, err, body)
	}
	for _, cred := range [][2]string{{"", ""}, {"prometheus", "wrong"}, {"eve", "s3cret"}} {
		code, body, err = get(client, "https://"+addr+"/metrics", cred[0], cred[1])
		if err != nil || code != 401 || strings.Contains(body, "ds01_") {
			t.Errorf("credentials %q: %d %v\n%.300s", cred, code, err, body)
		}
	}
	// The landing page is behind the same door.
	if code, _, err = get(client, "https://"+addr+"/", "", ""); err != nil || code != 401 {
		t.Errorf("landing page without credentials: %d %v", code, err)
	}
	// Plain HTTP to the TLS port gets no metrics.
	plain := &http.Client{Timeout: 10 * time.Second}
	code, body, err = get(plain, "http://"+addr+"/metrics", "prometheus", "s3cret")
	if err == nil && (code == 200 || strings.Contains(body, "ds01_")) {
		t.Errorf("plain HTTP: %d\n%.300s", code, body)
	}
	// A client that does not trust the certificate fails the handshake;
	// the server logs that at debug level only.
	if _, _, err = get(plain, "https://"+addr+"/metrics", "prometheus", "s3cret"); err == nil {
		t.Error("an untrusted certificate was accepted")
	}
	testutil.Poll(5*time.Second, func() bool { return strings.Contains(logs.String(), "handshake") })
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if strings.Contains(line, "handshake") && !strings.Contains(line, `"level":"debug"`) {
			t.Errorf("handshake error logged above debug: %s", line)
		}
	}
	if !strings.Contains(logs.String(), "TLS is enabled") {
		t.Errorf("toolkit log:\n%s", logs.String())
	}
}

// A web configuration that does not load fails Listen, before any
// address is opened.
func TestBadWebConfigFailsAtListen(t *testing.T) {
	dir := t.TempDir()
	bad := map[string]string{
		"missing.yml":   "",
		"unknown.yml":   "tls_server_config:\n  certfile: x\n",
		"nokey.yml":     "tls_server_config:\n  cert_file: cert.pem\n",
		"nocert.yml":    "tls_server_config:\n  cert_file: none.pem\n  key_file: none.pem\n",
		"plainhash.yml": "basic_auth_users:\n  prometheus: s3cret\n",
	}
	for name, body := range bad {
		path := filepath.Join(dir, name)
		if body != "" {
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		lns, err := New("test").Listen(Web{ListenAddresses: []string{"127.0.0.1:0"}, ConfigFile: path}, nil)
		if err == nil {
			lns[0].Close()
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
}

// The landing page at / links to /metrics; other paths are not found.
func TestLandingPage(t *testing.T) {
	lns, err := New("v9.9.9").Listen(Web{ListenAddresses: []string{"127.0.0.1:0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lns[0].Close()
	base := "http://" + lns[0].Addr().String()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	if resp.StatusCode != 200 || !strings.Contains(page, `href="/metrics"`) || !strings.Contains(page, "ds01-detectord") ||
		!strings.Contains(page, "v9.9.9") || strings.Contains(page, "debug/pprof") {
		t.Errorf("landing page: %s\n%s", resp.Status, page)
	}
	resp, err = http.Get(base + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("/nothing: %s", resp.Status)
	}
}

// Several addresses are all served; one that cannot be opened fails the
// whole Listen and leaves none open.
func TestListenAddresses(t *testing.T) {
	m := New("test")
	lns, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0", "127.0.0.1:0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range lns {
		resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v", ln.Addr(), err)
		} else {
			resp.Body.Close()
		}
	}
	if ex := Exposed(lns); len(ex) != 0 {
		t.Errorf("loopback listeners reported exposed: %v", ex)
	}
	taken := lns[0].Addr().String()
	if _, err := m.Listen(Web{ListenAddresses: []string{"127.0.0.1:0", taken}}, nil); err == nil || !strings.Contains(err.Error(), taken) {
		t.Errorf("taken address: %v", err)
	}
	for _, ln := range lns {
		ln.Close()
	}
	// Every address, and an address that is not loopback, are exposed.
	all, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	if ex := Exposed([]net.Listener{all}); len(ex) != 1 {
		t.Errorf(":0 not reported exposed: %v", ex)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ip, ok := a.(*net.IPNet)
		if !ok || ip.IP.IsLoopback() || ip.IP.To4() == nil {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.IP.String(), "0"))
		if err != nil {
			continue
		}
		if ex := Exposed([]net.Listener{ln}); len(ex) != 1 {
			t.Errorf("%s not reported exposed", ln.Addr())
		}
		ln.Close()
		break
	}
}
