package docker

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
)

// The view an event scan hands out mirrors the cache through any mix of
// new, changed and removed containers.
func TestViewMirrorsCache(t *testing.T) {
	s, err := New("unix:///nonexistent.sock", 0)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for step := 0; step < 2000; step++ {
		id := fmt.Sprintf("%064d", rnd.IntN(40))
		if rnd.IntN(3) == 0 {
			s.drop(id)
		} else {
			s.put(cachedContainer{c: Container{ID: id, Name: fmt.Sprint(step)}})
		}
		if len(s.view) != len(s.cache) || len(s.index) != len(s.cache) {
			t.Fatalf("step %d: view %d, index %d, cache %d", step, len(s.view), len(s.index), len(s.cache))
		}
		var fromView, fromCache []string
		for i, c := range s.view {
			if s.index[c.ID] != i {
				t.Fatalf("step %d: %s at %d, index says %d", step, c.ID, i, s.index[c.ID])
			}
			fromView = append(fromView, c.ID+"="+c.Name)
		}
		for _, cc := range s.cache {
			fromCache = append(fromCache, cc.c.ID+"="+cc.c.Name)
		}
		sort.Strings(fromView)
		sort.Strings(fromCache)
		if fmt.Sprint(fromView) != fmt.Sprint(fromCache) {
			t.Fatalf("step %d: view %v, cache %v", step, fromView, fromCache)
		}
	}
}
