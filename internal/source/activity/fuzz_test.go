package activity

import "testing"

// FuzzCounters: the control-file parsers never panic and never report a
// negative counter, whatever a file holds.
func FuzzCounters(f *testing.F) {
	f.Add([]byte(netDev))
	f.Add([]byte("8:0 Read 100\n8:0 Write 200\nTotal 300\n"))
	f.Add([]byte("8:0 rbytes=4096 wbytes=8192 rios=1\n"))
	f.Add([]byte("usage_usec 2500000\ninactive_file 9\ntotal_inactive_file 1\n"))
	f.Add([]byte("1 (a) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 99887 0 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if rx, tx, _ := ParseNetDev(b); rx < 0 || tx < 0 {
			t.Fatalf("net %d %d", rx, tx)
		}
		if r, w := ParseBlkio(b); r < 0 || w < 0 {
			t.Fatalf("blkio %d %d", r, w)
		}
		if r, w := ParseIOStat(b); r < 0 || w < 0 {
			t.Fatalf("io.stat %d %d", r, w)
		}
		for _, k := range []string{"usage_usec", "inactive_file", "total_inactive_file"} {
			if v, ok := Keyed(b, k); ok && v < 0 {
				t.Fatalf("%s %d", k, v)
			}
		}
		ProcessCPU(b)
	})
}
