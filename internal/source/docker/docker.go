// Package docker is the Docker source: it lists every container, running
// or not, inspects each one and reports what Docker says about it, with no
// judgement of its own. It holds one Docker client for the life of the
// process, and follows Docker's event stream (watch.go).
package docker

import (
	"context"
	"errors"
	"fmt"
	"github.com/docker/docker/api/types/events"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/source/docker/bounded"
)

// The facts this source reports are internal/facts' types: the reconcile
// step reads them without linking the Docker client.
type (
	Container     = facts.Container
	DeviceRequest = facts.DeviceRequest
	Mount         = facts.Mount
	Snapshot      = facts.Snapshot
)

// Source reads containers from one Docker Engine. Its inventory is a
// store that one goroutine owns (store.go); Close ends it.
type Source struct {
	cli         *client.Client
	requests    *countingTransport
	callTimeout time.Duration
	workers     int
	runtimesTTL time.Duration

	reqs chan func(*store)
	stop chan struct{}
	once sync.Once
	// birthInspects bounds the create events' inspects in flight (see
	// handle).
	birthInspects chan struct{}

	// afterList, when set, runs between the list call and the inspects.
	// Tests use it to remove a container mid-scan.
	afterList func()
}

// countingTransport counts the API requests the client makes, by endpoint
// ("GET /containers/json"; container IDs become {id}), for the metrics.
type countingTransport struct {
	next http.RoundTripper
	mu   sync.Mutex
	n    map[string]uint64
}

var (
	apiVersion = regexp.MustCompile(`^/v[0-9.]+`)
	hexID      = regexp.MustCompile(`/[0-9a-f]{64}(/|$)`)
)

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ep := r.Method + " " + hexID.ReplaceAllString(apiVersion.ReplaceAllString(r.URL.Path, ""), "/{id}$1")
	c.mu.Lock()
	c.n[ep]++
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

// Requests returns how many API requests the client has made, by endpoint.
func (s *Source) Requests() map[string]uint64 {
	c := s.requests
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// reorderMargin is how far back the checkpoint is held for events Docker
// publishes out of order.
const reorderMargin = time.Second

// birth is a container the event stream saw created, kept until a scan
// lists it, or reported as ephemeral when it was destroyed first.
type birth struct {
	c         Container
	destroyed bool
	at        time.Time // when it was recorded
	event     time.Time // the create event's own time
	gone      time.Time // the destroy event's own time
	// inspecting: its inspect is in flight, and c is what the events told
	// so far; later are the events applied to c since the create, applied
	// again to what the inspect returns (the last maxLater of them: each
	// sets the state outright, so the last ones decide it).
	inspecting bool
	later      []events.Message
}

// maxLater bounds birth.later.
const maxLater = 8

// New connects lazily to host (DOCKER_HOST and the default socket when
// empty). callTimeout bounds every API call.
func New(host string, callTimeout time.Duration) (*Source, error) {
	// Our own http.Client, so that its transport can be wrapped to count
	// requests once the options have set it up for the address.
	if host == "" {
		host = os.Getenv(client.EnvOverrideHost)
	}
	if host == "" {
		host = client.DefaultDockerHost
	}
	hc := &http.Client{Transport: &http.Transport{}}
	cli, err := client.NewClientWithOpts(client.WithHTTPClient(hc), client.FromEnv, client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	// Bodies bounded as they stream in (bound.go), and requests counted.
	counter := &countingTransport{next: bounded.Transport{Next: hc.Transport}, n: map[string]uint64{}}
	hc.Transport = counter
	s := &Source{cli: cli, requests: counter, callTimeout: callTimeout, workers: 8, runtimesTTL: 5 * time.Minute,
		reqs: make(chan func(*store)), stop: make(chan struct{}), birthInspects: make(chan struct{}, 8)}
	go run(newStore(), s.reqs, s.stop)
	return s, nil
}

// Close ends the store's goroutine and releases the client.
func (s *Source) Close() error {
	s.once.Do(func() { close(s.stop) })
	return s.cli.Close()
}

func (s *Source) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.callTimeout)
}

// runtimeInfo returns the daemon's runtimes and default runtime, asking the
// daemon at most once per runtimesTTL.
func (s *Source) runtimeInfo(ctx context.Context) (map[string]string, string, error) {
	var rts map[string]string
	var defRT string
	// While the stream is connected the runtimes cannot change (that takes
	// a dockerd restart, which breaks the stream); otherwise ask again after
	// runtimesTTL.
	if !s.do(func(st *store) {
		if st.runtimes != nil && (st.trusted || time.Since(st.runtimesAt) < s.runtimesTTL) {
			rts, defRT = st.runtimes, st.defaultRT
		}
	}) {
		return nil, "", errClosed
	}
	if rts != nil {
		return rts, defRT, nil
	}
	cctx, cancel := s.call(ctx)
	defer cancel()
	info, err := s.cli.Info(cctx)
	if err != nil {
		return nil, "", fmt.Errorf("docker info: %w", err)
	}
	rts = map[string]string{}
	for name, rt := range info.Runtimes {
		rts[name] = rt.Path
	}
	s.do(func(st *store) { st.runtimes, st.defaultRT, st.runtimesAt = rts, info.DefaultRuntime, time.Now() })
	return rts, info.DefaultRuntime, nil
}

// List returns every container. A container removed between the list and
// its inspect is left out. Any other failure fails the whole call, so that
// the caller can keep what it knew rather than think containers vanished.
//
// With full false, and while the event stream is connected and a full list
// has completed since it connected, List makes no list call: it inspects
// only the containers Docker's events named since the last call, drops
// those that are gone, and reports the rest as the last snapshot did. Its
// cost then follows the events, not the number of containers. Otherwise
// it lists.
func (s *Source) List(ctx context.Context, full bool) (Snapshot, error) {
	rts, defRT, err := s.runtimeInfo(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	var b batch
	if !s.do(func(st *store) { b = st.begin() }) {
		return Snapshot{}, errClosed
	}
	if !full && b.trusted && b.primed {
		snap, ok, err := s.changes(ctx, b, rts, defRT)
		if ok || err != nil {
			return snap, err
		}
		// The stream reconnected meanwhile: list. The events' IDs were
		// given back, and are taken again.
		if !s.do(func(st *store) { b = st.begin() }) {
			return Snapshot{}, errClosed
		}
	}

	listStart := time.Now()
	lctx, cancel := s.call(ctx)
	sums, err := s.listSummaries(lctx)
	if errors.Is(err, bounded.ErrOverPass) {
		sums, err = s.listSummaries(bounded.Shrink(lctx))
	}
	cancel()
	if err != nil {
		s.do(func(st *store) {
			st.undo(b) // not consumed: keep them for the next try
			st.runtimes = nil
		})
		return Snapshot{}, fmt.Errorf("docker list: %w", err)
	}
	if s.afterList != nil {
		s.afterList()
	}

	list := make([]listed, len(sums))
	for i, sum := range sums {
		list[i].state = sum.State
		if len(sum.Names) > 0 {
			list[i].name = strings.TrimPrefix(sum.Names[0], "/")
		}
	}
	s.do(func(st *store) {
		for i, sum := range sums {
			list[i].c = st.cached(b, sum.ID, list[i].state, list[i].name)
		}
	})
	errs := make([]error, len(sums))
	sem := make(chan struct{}, s.workers)
	var wg sync.WaitGroup
	for i, sum := range sums {
		if list[i].c != nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := s.inspect(ctx, sum.ID, rts, defRT)
			switch {
			case cerrdefs.IsNotFound(err):
				// removed mid-scan: not an error, and not in the result
			case err != nil:
				errs[i] = err
			default:
				list[i].c = c
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.do(func(st *store) { st.undo(b) })
		return Snapshot{}, err
	}
	var snap Snapshot
	if !s.do(func(st *store) { snap = st.commitList(b, list, listStart) }) {
		return Snapshot{}, errClosed
	}
	return snap, nil
}

// listSummaries lists every container through the client, and decodes the
// response itself (bounded.TakeList): one container at a time, three
// fields each.
func (s *Source) listSummaries(ctx context.Context) ([]bounded.Summary, error) {
	ctx, t := bounded.TakeList(ctx)
	full, err := s.cli.ContainerList(ctx, container.ListOptions{All: true})
	if t.Body == nil || err != nil {
		// Not a JSON 200 (the transport took nothing): the client's answer.
		if t.Body != nil {
			t.Body.Close()
		}
		sums := make([]bounded.Summary, len(full))
		for i, c := range full {
			sums[i] = bounded.Summary{ID: c.ID, Names: c.Names, State: c.State}
		}
		return sums, err
	}
	defer t.Body.Close()
	return bounded.DecodeSummaries(t.Body)
}

// changes is List for an event-triggered scan: it inspects the containers
// the events named, and reports everything else as the last snapshot did.
// It returns false, having given the IDs back, when the store was reset
// (the stream reconnected) since the scan began: the caller lists.
func (s *Source) changes(ctx context.Context, b batch, rts map[string]string, defRT string) (Snapshot, bool, error) {
	start := time.Now()
	got := make(map[string]*Container, len(b.dirty))
	for id := range b.dirty {
		c, err := s.inspect(ctx, id, rts, defRT)
		switch {
		case cerrdefs.IsNotFound(err):
			got[id] = nil // removed
		case err != nil:
			s.do(func(st *store) { st.undo(b) }) // try them again with the next scan
			return Snapshot{}, false, err
		default:
			got[id] = c
		}
	}
	var snap Snapshot
	ok := false
	if !s.do(func(st *store) {
		if snap, ok = st.commitChanges(b, got, start); !ok {
			st.undo(b)
		}
	}) {
		return Snapshot{}, false, errClosed
	}
	return snap, ok, nil
}

// inspect returns a new container: what the store holds is never changed.
func (s *Source) inspect(ctx context.Context, id string, rts map[string]string, defRT string) (*Container, error) {
	ictx, cancel := s.call(ctx)
	defer cancel()
	js, err := s.cli.ContainerInspect(ictx, id)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("docker inspect %.12s: %w", id, err)
	}
	c := fromInspect(js, rts, defRT)
	return &c, nil
}

// gpuEnv keeps the NVIDIA_* variables of a container's environment: all
// that classification reads, and the rest (PATH, the image's settings, a
// user's secrets) has no business in the daemon's memory.
func gpuEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "NVIDIA_") {
			out = append(out, kv)
		}
	}
	return out
}

func shortImage(ref, id string) string {
	if ref != "" && !strings.HasPrefix(ref, "sha256:") {
		return ref
	}
	if ref == "" {
		ref = id
	}
	h := strings.TrimPrefix(ref, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	if h == "" {
		return "unknown"
	}
	return h
}

func fromInspect(js container.InspectResponse, runtimes map[string]string, defaultRT string) Container {
	c := Container{}
	if js.ContainerJSONBase != nil {
		c.ID = js.ID
		c.Name = strings.TrimPrefix(js.Name, "/")
		c.Created, _ = time.Parse(time.RFC3339Nano, js.Created)
		if st := js.State; st != nil {
			c.Status = st.Status
			c.StartedAt, _ = time.Parse(time.RFC3339Nano, st.StartedAt)
			c.FinishedAt, _ = time.Parse(time.RFC3339Nano, st.FinishedAt)
			c.ExitCode = st.ExitCode
			if st.Running || st.Paused || st.Restarting {
				c.Pid = st.Pid
			}
		}
		c.Image = js.Image
	}
	c.Labels = map[string]string{}
	if cfg := js.Config; cfg != nil {
		if cfg.Labels != nil {
			c.Labels = cfg.Labels
		}
		c.Env = gpuEnv(cfg.Env)
		c.Image = shortImage(cfg.Image, c.Image)
	} else {
		c.Image = shortImage("", c.Image)
	}
	if hc := js.HostConfig; js.ContainerJSONBase != nil && hc != nil {
		c.Runtime = hc.Runtime
		if c.Runtime == "" {
			c.Runtime = defaultRT
		}
		c.RuntimePath = runtimes[c.Runtime]
		c.Privileged = hc.Privileged
		c.HostNetwork = hc.NetworkMode.IsHost()
		for _, d := range hc.Devices {
			c.DevicePaths = append(c.DevicePaths, d.PathOnHost)
		}
		for _, r := range hc.DeviceRequests { // null when --gpus was not used
			c.DeviceRequests = append(c.DeviceRequests, DeviceRequest{
				Driver: r.Driver, Count: r.Count, DeviceIDs: r.DeviceIDs, Capabilities: r.Capabilities,
			})
		}
	}
	for _, m := range js.Mounts {
		c.Mounts = append(c.Mounts, Mount{Type: string(m.Type), Source: m.Source})
	}
	return c
}
