// Package policy reads the site's idle rule from its resource-limits.yaml,
// as the site writes it (docs/ARCHITECTURE.md, "Idle by the site's rule"), and answers, for a
// workload's owner and origin, which thresholds and timeout apply:
//
//   - top-level policies, with groups.<g>.policies over them: the
//     thresholds, idle_detection_window and grace_period_m;
//   - membership from groups/<g>.members beside the file (one user a line,
//     # comments) and inline groups.<g>.members; a user in no group belongs
//     to default_group; a user in several takes the first in the file;
//   - the timeout: ds01-managed containers take the user's
//     user-overrides.yaml idle_timeout_h, else the group's, else
//     defaults.idle_timeout_h; devcontainer, compose and raw-docker
//     containers take container_types.<devcontainer|compose|docker>;
//     anything else container_types.unknown; null is exempt.
//
// Parse is pure; Load reads the files.
package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// Thresholds are the idle rule's numbers.
type Thresholds struct {
	GPUPercent float64       // gpu_idle_threshold, percent SM
	CPUPercent float64       // cpu_idle_threshold, percent of one core
	NetBytes   float64       // network_idle_threshold, bytes per interval
	Window     int           // idle_detection_window, consecutive scans
	Grace      time.Duration // grace_period_m, after the start
}

// Defaults are the flags' defaults, the site's own values.
var Defaults = Thresholds{GPUPercent: 5, CPUPercent: 2, NetBytes: 1 << 20, Window: 3, Grace: 30 * time.Minute}

// Applied is the rule for one workload: its thresholds and the record the
// state keeps of where they came from.
type Applied struct {
	Thresholds
	Timeout *time.Duration // nil: no deadline (exempt, or none given)
	Record  inventory.IdlePolicy
}

// Policy is one loaded rule set. It is never changed once built: a reload
// builds a new one.
type Policy struct {
	source       string
	base         Thresholds
	groups       map[string]group
	order        []string // group names in the file's order
	defaultGroup string
	defaultsTO   opt
	members      map[string]membership
	overrides    map[string]opt
	types        map[string]opt
}

type group struct {
	th      Thresholds
	timeout opt
}

type membership struct{ group, source string }

// FromFlags is the rule without a policy file: site-wide thresholds and no
// timeout.
func FromFlags(th Thresholds) *Policy {
	return &Policy{source: "flags", base: th}
}

// Source is the policy file's path, or "flags".
func (p *Policy) Source() string { return p.source }

// MaxFileBytes caps each file read.
const MaxFileBytes = 4 << 20

// Load reads the policy file at path, its groups/<g>.members files and its
// user-overrides.yaml. warnings are conditions that do not stop it (an
// unreadable overrides file, which the site may keep from non-admins).
func Load(path string) (p *Policy, warnings []string, err error) {
	main, err := readCapped(path)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Dir(path)
	over, err := readCapped(filepath.Join(dir, "user-overrides.yaml"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		over = nil
	case err != nil:
		warnings = append(warnings, fmt.Sprintf("user overrides not read, none applied: %v", err))
		over = nil
	}
	names, err := groupNames(main)
	if err != nil {
		return nil, warnings, fmt.Errorf("%s: %w", path, err)
	}
	files := map[string][]byte{}
	for _, g := range names {
		if strings.ContainsAny(g, "/\x00") || g == "." || g == ".." {
			continue // not a file name: inline members only
		}
		b, err := readCapped(filepath.Join(dir, "groups", g+".members"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, warnings, err
		}
		files[g] = b
	}
	p, err = Parse(main, over, files, path)
	return p, warnings, err
}

func readCapped(path string) ([]byte, error) {
	// O_NONBLOCK: a FIFO planted at the path must not hang the reload.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileBytes)
	}
	return b, nil
}

// opt is a value that may be absent, null or a number. yaml.v3 calls no
// unmarshaler for a null, so opts are read from the nodes (field).
type opt struct {
	set, null bool
	v         float64
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// field finds key in a mapping node; nil when absent (or n is null). A
// node that is neither a mapping nor null is an error.
func field(n *yaml.Node, key string) (*yaml.Node, error) {
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping", n.Line)
	}
	var found *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			if found != nil {
				return nil, fmt.Errorf("line %d: %s given twice", n.Content[i].Line, key)
			}
			found = n.Content[i+1]
		}
	}
	return found, nil
}

// optField reads key of a mapping node as an opt: a number ≥ 0 or null.
func optField(n *yaml.Node, key string) (opt, error) {
	v, err := field(n, key)
	if err != nil || v == nil {
		return opt{}, err
	}
	if isNull(v) {
		return opt{set: true, null: true}, nil
	}
	var o opt
	if v.Kind != yaml.ScalarNode || v.Decode(&o.v) != nil {
		return o, fmt.Errorf("line %d: %s: want a number or null", v.Line, key)
	}
	if math.IsNaN(o.v) || math.IsInf(o.v, 0) || o.v < 0 {
		return o, fmt.Errorf("line %d: %s: %v: want a number ≥ 0", v.Line, key, v.Value)
	}
	o.set = true
	return o, nil
}

type rawPolicies struct{ GPU, CPU, Net, Window, Grace opt }

func policiesOf(n *yaml.Node) (*rawPolicies, error) {
	if isNull(n) {
		return nil, nil
	}
	var r rawPolicies
	for _, f := range []struct {
		key string
		dst *opt
	}{{"gpu_idle_threshold", &r.GPU}, {"cpu_idle_threshold", &r.CPU}, {"network_idle_threshold", &r.Net},
		{"idle_detection_window", &r.Window}, {"grace_period_m", &r.Grace}} {
		var err error
		if *f.dst, err = optField(n, f.key); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

type rawGroup struct {
	IdleTimeoutH opt
	Policies     *rawPolicies
	Members      []string
}

type rawFile struct {
	Defaults       yaml.Node `yaml:"defaults"`
	DefaultGroup   string    `yaml:"default_group"`
	Groups         yaml.Node `yaml:"groups"`
	Policies       yaml.Node `yaml:"policies"`
	ContainerTypes yaml.Node `yaml:"container_types"`
}

// groupNames lists the groups of a policy file, in its order.
func groupNames(b []byte) ([]string, error) {
	var f rawFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	names, _, err := groupsOf(&f.Groups)
	return names, err
}

func groupsOf(n *yaml.Node) ([]string, map[string]rawGroup, error) {
	out := map[string]rawGroup{}
	if isNull(n) {
		return nil, out, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("line %d: groups: want a mapping", n.Line)
	}
	var names []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			return nil, nil, fmt.Errorf("line %d: a group needs a name", k.Line)
		}
		if _, dup := out[k.Value]; dup {
			return nil, nil, fmt.Errorf("line %d: group %q given twice", k.Line, k.Value)
		}
		var g rawGroup
		var err error
		if g.IdleTimeoutH, err = optField(v, "idle_timeout_h"); err != nil {
			return nil, nil, fmt.Errorf("group %s: %w", k.Value, err)
		}
		pn, err := field(v, "policies")
		if err == nil {
			g.Policies, err = policiesOf(pn)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("group %s: policies: %w", k.Value, err)
		}
		if mn, err := field(v, "members"); err != nil || (mn != nil && !isNull(mn) && mn.Decode(&g.Members) != nil) {
			return nil, nil, fmt.Errorf("group %s: members: want a list of user names", k.Value)
		}
		names = append(names, k.Value)
		out[k.Value] = g
	}
	return names, out, nil
}

// timeouts reads idle_timeout_h of each entry of a mapping (container
// types, user overrides).
func timeouts(n *yaml.Node, what string) (map[string]opt, error) {
	out := map[string]opt{}
	if isNull(n) {
		return out, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: %s: want a mapping", n.Line, what)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		o, err := optField(n.Content[i+1], "idle_timeout_h")
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", what, n.Content[i].Value, err)
		}
		if o.set {
			out[n.Content[i].Value] = o
		}
	}
	return out, nil
}

// Parse builds a policy from the policy file's bytes, the user overrides
// file's (nil: none) and the members files' by group. source names it in
// errors and in the state.
func Parse(main, overrides []byte, memberFiles map[string][]byte, source string) (*Policy, error) {
	p, err := parse(main, overrides, memberFiles, source)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return p, nil
}

func parse(main, overrides []byte, memberFiles map[string][]byte, source string) (*Policy, error) {
	var f rawFile
	if err := yaml.Unmarshal(main, &f); err != nil {
		return nil, err
	}
	names, groups, err := groupsOf(&f.Groups)
	if err != nil {
		return nil, err
	}
	p := &Policy{source: source, order: names, groups: map[string]group{}, members: map[string]membership{}, defaultGroup: f.DefaultGroup}
	if p.defaultsTO, err = optField(&f.Defaults, "idle_timeout_h"); err != nil {
		return nil, fmt.Errorf("defaults: %w", err)
	}
	pol, err := policiesOf(&f.Policies)
	if err == nil {
		p.base, err = apply(Defaults, pol)
	}
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	for _, name := range names {
		g := groups[name]
		th, err := apply(p.base, g.Policies)
		if err != nil {
			return nil, fmt.Errorf("groups.%s.policies: %w", name, err)
		}
		p.groups[name] = group{th: th, timeout: g.IdleTimeoutH}
	}
	if f.DefaultGroup != "" {
		if _, ok := p.groups[f.DefaultGroup]; !ok {
			return nil, fmt.Errorf("default_group %q is not a group of the file", f.DefaultGroup)
		}
	}
	if p.types, err = timeouts(&f.ContainerTypes, "container_types"); err != nil {
		return nil, err
	}
	// Membership: the first group in the file's order wins; within one,
	// the members file before the inline list.
	for _, name := range names {
		for _, u := range parseMembers(memberFiles[name]) {
			if _, ok := p.members[u]; !ok {
				p.members[u] = membership{name, "members-file"}
			}
		}
		for _, u := range groups[name].Members {
			if u = strings.TrimSpace(u); u != "" {
				if _, ok := p.members[u]; !ok {
					p.members[u] = membership{name, "inline-members"}
				}
			}
		}
	}
	p.overrides = map[string]opt{}
	if len(overrides) > 0 {
		var o yaml.Node
		if err := yaml.Unmarshal(overrides, &o); err != nil {
			return nil, fmt.Errorf("user-overrides.yaml: %w", err)
		}
		root := &o
		if o.Kind == yaml.DocumentNode && len(o.Content) == 1 {
			root = o.Content[0]
		}
		if p.overrides, err = timeouts(root, "user-overrides.yaml"); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// parseMembers reads a members file: one user a line, # starts a comment.
func parseMembers(b []byte) []string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if u := strings.TrimSpace(line); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// apply lays the policies given over th.
func apply(th Thresholds, r *rawPolicies) (Thresholds, error) {
	if r == nil {
		return th, nil
	}
	num := func(o opt, name string, dst *float64) error {
		if !o.set {
			return nil
		}
		if o.null {
			return fmt.Errorf("%s: null; want a number", name)
		}
		*dst = o.v
		return nil
	}
	if err := num(r.GPU, "gpu_idle_threshold", &th.GPUPercent); err != nil {
		return th, err
	}
	if err := num(r.CPU, "cpu_idle_threshold", &th.CPUPercent); err != nil {
		return th, err
	}
	if err := num(r.Net, "network_idle_threshold", &th.NetBytes); err != nil {
		return th, err
	}
	if r.Window.set {
		if r.Window.null || r.Window.v < 1 || r.Window.v != math.Trunc(r.Window.v) || r.Window.v > 1e6 {
			return th, errors.New("idle_detection_window: want a whole number ≥ 1")
		}
		th.Window = int(r.Window.v)
	}
	if r.Grace.set {
		if r.Grace.null || r.Grace.v > 1e6 {
			return th, errors.New("grace_period_m: want minutes ≥ 0")
		}
		th.Grace = time.Duration(r.Grace.v * float64(time.Minute))
	}
	return th, nil
}

// For is the rule for a workload of user and origin (inventory's origin
// constants; "" for a host process).
func (p *Policy) For(user, origin string) Applied {
	a := Applied{Thresholds: p.base}
	a.Record = inventory.IdlePolicy{Source: p.source, TimeoutSource: "none"}
	if p.source != "flags" {
		m, ok := p.members[user]
		if !ok && p.defaultGroup != "" {
			m = membership{p.defaultGroup, "default_group"}
		}
		a.Record.Group, a.Record.GroupSource = m.group, m.source
		g := p.groups[m.group]
		if m.group != "" {
			a.Thresholds = g.th
		}
		var to opt
		switch origin {
		case inventory.OriginManaged:
			switch {
			case p.overrides[user].set:
				to, a.Record.TimeoutSource = p.overrides[user], "user-override"
			case g.timeout.set:
				to, a.Record.TimeoutSource = g.timeout, "group"
			case p.defaultsTO.set:
				to, a.Record.TimeoutSource = p.defaultsTO, "defaults"
			}
		default:
			typ := map[string]string{inventory.OriginDevcontainer: "devcontainer", inventory.OriginCompose: "compose", inventory.OriginRawDocker: "docker"}[origin]
			if t, ok := p.types[typ]; ok && typ != "" && t.set {
				to, a.Record.TimeoutSource = t, "container_types."+typ
			} else if t, ok := p.types["unknown"]; ok && t.set {
				to, a.Record.TimeoutSource = t, "container_types.unknown"
			}
		}
		if to.set && !to.null {
			h := min(to.v, 1e6) // a million hours: no Duration overflow
			d := time.Duration(h * float64(time.Hour))
			a.Timeout, a.Record.IdleTimeoutH = &d, &h
		} else if to.set {
			a.Record.TimeoutSource += " (null: exempt)"
		}
	}
	a.Record.IdleDetectionWindow = a.Window
	a.Record.GracePeriodM = a.Grace.Minutes()
	return a
}
