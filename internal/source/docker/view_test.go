package docker

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The view an event scan hands out and the cache that places each
// container in it agree through any mix of new, changed and removed
// containers.
func TestViewMirrorsCache(t *testing.T) {
	s, err := New("unix:///nonexistent.sock", 0)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for step := 0; step < 2000; step++ {
		id := fmt.Sprintf("%064d", rnd.IntN(40))
		put := rnd.IntN(3) != 0
		if put {
			s.put(Container{ID: id, Name: fmt.Sprint(step)}, "exited", "n")
		} else {
			s.drop(id)
		}
		if len(s.view) != len(s.cache) {
			t.Fatalf("step %d: view %d, cache %d", step, len(s.view), len(s.cache))
		}
		for i, c := range s.view {
			if cc, ok := s.cache[c.ID]; !ok || cc.pos != i {
				t.Fatalf("step %d: %s at %d, cache says %+v (%v)", step, c.ID, i, cc, ok)
			}
		}
		cc, ok := s.cache[id]
		switch {
		case put && (!ok || s.view[cc.pos].Name != fmt.Sprint(step)):
			t.Fatalf("step %d: %s is not what was put last", step, id)
		case !put && ok:
			t.Fatalf("step %d: %s still there after drop", step, id)
		}
	}
}
