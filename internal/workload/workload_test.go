package workload

import "testing"

func TestAddUtil(t *testing.T) {
	p := func(v int) *int { return &v }
	for _, c := range []struct {
		name string
		in   []*int
		want *int
	}{
		{"one", []*int{p(30)}, p(30)},
		{"summed", []*int{p(30), p(40)}, p(70)},
		{"capped", []*int{p(70), p(40)}, p(100)},
		{"one over the cap", []*int{p(150)}, p(100)},
		{"unknown first", []*int{nil, p(40)}, nil},
		{"unknown last", []*int{p(40), nil}, nil},
	} {
		sums := map[string]*int{}
		for _, v := range c.in {
			AddUtil(sums, "gpu", v)
		}
		got, ok := sums["gpu"]
		if !ok || (got == nil) != (c.want == nil) || got != nil && *got != *c.want {
			t.Errorf("%s: got %v (present %v), want %v", c.name, deref(got), ok, deref(c.want))
		}
		if len(sums) != 1 {
			t.Errorf("%s: %d keys", c.name, len(sums))
		}
	}
}

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestShortID(t *testing.T) {
	if ShortID("0123456789abcdef") != "0123456789ab" || ShortID("abc") != "abc" {
		t.Error("ShortID")
	}
}
