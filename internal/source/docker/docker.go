// Package docker is the Docker source: it lists every container, running
// or not, inspects each one and reports what Docker says about it, with no
// judgement of its own. It holds one Docker client for the life of the
// process, and follows Docker's event stream (watch.go).
package docker

import (
	"context"
	"errors"
	"fmt"
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
)

// The facts this source reports are internal/facts' types: the reconcile
// step reads them without linking the Docker client.
type (
	Container     = facts.Container
	DeviceRequest = facts.DeviceRequest
	Mount         = facts.Mount
	Snapshot      = facts.Snapshot
)

// Source reads containers from one Docker Engine.
type Source struct {
	cli         *client.Client
	requests    *countingTransport
	callTimeout time.Duration
	workers     int

	mu          sync.Mutex
	runtimes    map[string]string // name → binary path
	defaultRT   string
	runtimesAt  time.Time
	runtimesTTL time.Duration

	// The inspect cache: a container's labels and GPU configuration do not
	// change during its life, so a container is inspected again only when
	// it is new, its state changed, or an event named it. The cache is used
	// only while the event stream is connected (trusted), since only the
	// stream tells about changes the list cannot show (a restart between two
	// scans, an update).
	// The containers themselves are in view, one slice that an event scan
	// updates in place and hands out as its snapshot, instead of copying
	// thousands of containers; cache says where each one is. Both change
	// only through put and drop, so they always hold the same containers.
	cache   map[string]cachedContainer
	view    []Container
	dirty   map[string]bool // IDs named by events since the last list
	trusted bool
	// primed: a full list has completed since the stream (re)connected, so
	// the cache plus the events since hold every container: an
	// event-triggered scan may then inspect only what the events named.
	primed  bool
	gen     uint64            // counts cache resets: a list primes only the cache it began with
	rev     uint64            // the last Container.Rev given
	births  map[string]*birth // containers the stream saw created (see Ephemeral)
	handled time.Time         // time of the last event handled

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

type cachedContainer struct {
	pos   int    // in view
	state string // list summary State when inspected
	name  string
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
}

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
	counter := &countingTransport{next: boundTransport{next: hc.Transport}, n: map[string]uint64{}}
	hc.Transport = counter
	return &Source{cli: cli, requests: counter, callTimeout: callTimeout, workers: 8, runtimesTTL: 5 * time.Minute,
		cache: map[string]cachedContainer{}, dirty: map[string]bool{}, births: map[string]*birth{}}, nil
}

// Close releases the client.
func (s *Source) Close() error { return s.cli.Close() }

func (s *Source) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.callTimeout)
}

// runtimeInfo returns the daemon's runtimes and default runtime, asking the
// daemon at most once per runtimesTTL.
func (s *Source) runtimeInfo(ctx context.Context) (map[string]string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// While the stream is connected the runtimes cannot change (that takes
	// a dockerd restart, which breaks the stream); otherwise ask again after
	// runtimesTTL.
	if s.runtimes != nil && (s.trusted || time.Since(s.runtimesAt) < s.runtimesTTL) {
		return s.runtimes, s.defaultRT, nil
	}
	cctx, cancel := s.call(ctx)
	defer cancel()
	info, err := s.cli.Info(cctx)
	if err != nil {
		return nil, "", fmt.Errorf("docker info: %w", err)
	}
	rts := map[string]string{}
	for name, rt := range info.Runtimes {
		rts[name] = rt.Path
	}
	s.runtimes, s.defaultRT, s.runtimesAt = rts, info.DefaultRuntime, time.Now()
	return rts, info.DefaultRuntime, nil
}

// List returns every container. A container removed between the list and
// its inspect is left out. Any other failure fails the whole call, so that
// the caller can keep what it knew rather than think containers vanished.
//
// With full false, and while the event stream is connected and a full list
// has completed since it connected, List makes no list call: it inspects
// only the containers Docker's events named since the last call, drops
// those that are gone, and reports the rest from its cache. Its cost then
// follows the events, not the number of containers. Otherwise it lists.
func (s *Source) List(ctx context.Context, full bool) (Snapshot, error) {
	rts, defRT, err := s.runtimeInfo(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	s.mu.Lock()
	dirty, trusted, primed, gen := s.dirty, s.trusted, s.primed, s.gen
	s.dirty = map[string]bool{}
	s.mu.Unlock()
	if !full && trusted && primed {
		return s.changes(ctx, dirty, rts, defRT)
	}

	listStart := time.Now()
	lctx, cancel := s.call(ctx)
	sums, err := s.cli.ContainerList(lctx, container.ListOptions{All: true})
	cancel()
	if err != nil {
		s.markDirty(dirty) // not consumed: keep them for the next try
		s.dropRuntimes()
		return Snapshot{}, fmt.Errorf("docker list: %w", err)
	}
	if s.afterList != nil {
		s.afterList()
	}

	out := make([]*Container, len(sums))
	errs := make([]error, len(sums))
	sem := make(chan struct{}, s.workers)
	var wg sync.WaitGroup
	for i, sum := range sums {
		name := ""
		if len(sum.Names) > 0 {
			name = strings.TrimPrefix(sum.Names[0], "/")
		}
		s.mu.Lock()
		cc, hit := s.cache[sum.ID]
		var c Container
		if hit {
			c = s.view[cc.pos]
		}
		s.mu.Unlock()
		if trusted && hit && !dirty[sum.ID] && cc.state == sum.State && cc.name == name {
			out[i] = &c
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
				out[i] = &c
				s.mu.Lock()
				s.put(c, sum.State, name)
				s.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.markDirty(dirty)
		return Snapshot{}, err
	}
	snap := Snapshot{Containers: make([]Container, 0, len(out))}
	listed := make(map[string]bool, len(out))
	for _, c := range out {
		if c != nil {
			snap.Containers = append(snap.Containers, *c)
			listed[c.ID] = true
		}
	}
	s.mu.Lock()
	for id := range s.cache {
		if !listed[id] {
			s.drop(id)
		}
	}
	// The view in the list's order: the snapshot is the inventory.
	s.view = snap.Containers
	for i, c := range s.view {
		cc := s.cache[c.ID]
		cc.pos = i
		s.cache[c.ID] = cc
	}
	if trusted && s.trusted && gen == s.gen {
		s.primed = true
	}
	s.finish(&snap, listStart)
	s.mu.Unlock()
	return snap, nil
}

// changes is List for an event-triggered scan: it inspects the containers
// the events named, and reports everything else from the cache.
func (s *Source) changes(ctx context.Context, dirty map[string]bool, rts map[string]string, defRT string) (Snapshot, error) {
	start := time.Now()
	for id := range dirty {
		c, err := s.inspect(ctx, id, rts, defRT)
		switch {
		case cerrdefs.IsNotFound(err):
			s.mu.Lock()
			s.drop(id) // removed
			s.mu.Unlock()
		case err != nil:
			s.markDirty(dirty) // try them again with the next scan
			return Snapshot{}, err
		default:
			s.mu.Lock()
			s.put(c, c.Status, c.Name)
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Containers: s.view}
	s.finish(&snap, start)
	snap.Incremental = true
	return snap, nil
}

// put records an inspected container, with the list's state and name for
// it. Call it with s.mu held.
func (s *Source) put(c Container, state, name string) {
	if cc, ok := s.cache[c.ID]; ok {
		s.view[cc.pos] = c
		s.cache[c.ID] = cachedContainer{pos: cc.pos, state: state, name: name}
		return
	}
	s.cache[c.ID] = cachedContainer{pos: len(s.view), state: state, name: name}
	s.view = append(s.view, c)
}

// drop forgets a removed container: the last one of the view takes its
// place. Call it with s.mu held.
func (s *Source) drop(id string) {
	cc, ok := s.cache[id]
	if !ok {
		return
	}
	delete(s.cache, id)
	last := len(s.view) - 1
	if cc.pos != last {
		moved := s.view[last]
		s.view[cc.pos] = moved
		m := s.cache[moved.ID]
		m.pos = cc.pos
		s.cache[moved.ID] = m
	}
	s.view[last] = Container{}
	s.view = s.view[:last]
}

// finish sets the snapshot's checkpoint and ephemeral containers from the
// event stream's record. The cache then holds exactly the snapshot's
// containers. Call it with s.mu held.
func (s *Source) finish(snap *Snapshot, listStart time.Time) {
	snap.ListStart = listStart
	if !s.handled.IsZero() {
		// Docker may publish events slightly out of order: hold the
		// checkpoint back so a late one is replayed rather than skipped.
		snap.Checkpoint = s.handled.Add(-reorderMargin)
	}
	for id, b := range s.births {
		_, listed := s.cache[id]
		switch {
		case listed:
			delete(s.births, id) // the scan saw it; the normal diff takes over
		case b.destroyed:
			c := b.c
			c.Gone = b.gone
			snap.Ephemeral = append(snap.Ephemeral, c)
			delete(s.births, id)
		case b.at.Before(listStart.Add(-time.Minute)):
			delete(s.births, id) // never listed, never destroyed: stale
		case !b.event.IsZero() && !b.event.After(snap.Checkpoint):
			// Not reflected yet: a restart must replay its creation.
			snap.Checkpoint = b.event.Add(-time.Nanosecond)
		}
	}
}

func (s *Source) inspect(ctx context.Context, id string, rts map[string]string, defRT string) (Container, error) {
	ictx, cancel := s.call(ctx)
	defer cancel()
	js, err := s.cli.ContainerInspect(ictx, id)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return Container{}, err
		}
		return Container{}, fmt.Errorf("docker inspect %.12s: %w", id, err)
	}
	c := fromInspect(js, rts, defRT)
	s.mu.Lock()
	s.rev++
	c.Rev = s.rev
	s.mu.Unlock()
	return c, nil
}

func (s *Source) markDirty(ids map[string]bool) {
	s.mu.Lock()
	for id := range ids {
		s.dirty[id] = true
	}
	s.mu.Unlock()
}

func (s *Source) dropRuntimes() {
	s.mu.Lock()
	s.runtimes = nil
	s.mu.Unlock()
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
