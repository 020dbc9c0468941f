package statefile

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// BenchmarkSealCost writes a state of 1,000 containers as a steady cycle
// does (the encodings cached, the file replaced atomically), without and
// with the seal: the difference is what sealing adds to a cycle (an HMAC
// over the whole file). make bench compares it with the steady cycle.
func BenchmarkSealCost(b *testing.B) {
	st := inventory.Empty()
	st.LastScan = inventory.TimePtr(time.Now())
	for i := 0; i < 1000; i++ {
		id := fmt.Sprintf("%012x", i)
		st.Containers[id] = inventory.Container{ID: id, FullID: id + id + id + id + id[:4], Name: fmt.Sprintf("bench-%04d", i), Origin: "ds01-managed",
			User: fmt.Sprintf("user%d", i%7), Image: "ds01/pytorch:2.3-cuda12", Status: "running", GPUDevices: []string{}, GPUAccess: []string{},
			UserSource: inventory.UserSourceLabelUser, Pid: 1000 + i}
	}
	path := filepath.Join(b.TempDir(), "state.json")
	key := seal.NewKey(bytes.Repeat([]byte{1}, seal.KeySize))
	for _, c := range []struct {
		name string
		key  *seal.Key
	}{{"unsealed", nil}, {"sealed", key}} {
		b.Run(c.name, func(b *testing.B) {
			enc := &Encoder{Key: c.key}
			if err := SaveWith(enc, path, st, ""); err != nil {
				b.Fatal(err)
			}
			fi, _ := os.Stat(path)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				st.LastScan = inventory.TimePtr(time.Now())
				if err := SaveWith(enc, path, st, ""); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(fi.Size())/1e6, "MB")
		})
	}
	// The seal of a whole file from its bytes, as verify and a daemon's
	// first write take it: every piece hashed. A steady write hashes only
	// the pieces that changed (the cached containers' hashes are kept), so
	// sealed minus unsealed above is what sealing adds to a cycle.
	b.Run("seal-only", func(b *testing.B) {
		plain, err := Encode(st)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(plain)))
		for i := 0; i < b.N; i++ {
			s := key.NewStateSealer()
			s.Write(plain)
			s.Member()
		}
	})
}
