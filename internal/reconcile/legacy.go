package reconcile

import (
	"strconv"

	"github.com/ds01/ds01-detectord/internal/classify"
	"github.com/ds01/ds01-detectord/internal/facts"
	"github.com/ds01/ds01-detectord/internal/redact"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// adoptLegacy carries the Python scanner's host process entries over to
// this daemon's identity. The reference keys processes by PID alone and
// writes neither start_time nor uid, so on the first cycle after the
// switch every such entry would look like a process that exited (its
// start time, 0, differs from any real one) and come back as a new one:
// a false host_gpu_process_exited, then a second discovery.
//
// An entry without a start time is the same process when the PID is
// running now with the same user and the same command line, compared the
// way the reference wrote them: argv joined with spaces, as read (this
// daemon masks secrets in what it records; the reference did not), and
// "unknown" for a UID that does not resolve. Such an entry takes the
// running process's start time and UID and keeps its detected_at; any
// other legacy entry ends the usual way (a PID reused by another process
// is an exit and a new process), with the secrets in its command line
// masked unless keepSecrets: its exit event must not log what this daemon
// never records. Entries that have a start time are this daemon's own and
// are never touched.
//
// The maps are copied before they change: prev belongs to the caller.
func adoptLegacy(confirmed, pending, seen map[string]inventory.HostProcess, f facts.Scan, keepSecrets bool) (map[string]inventory.HostProcess, map[string]inventory.HostProcess) {
	return adoptIn(confirmed, seen, f, keepSecrets), adoptIn(pending, seen, f, keepSecrets)
}

func adoptIn(old, seen map[string]inventory.HostProcess, f facts.Scan, keepSecrets bool) map[string]inventory.HostProcess {
	var out map[string]inventory.HostProcess
	for k, o := range old {
		if o.StartTime != 0 {
			continue
		}
		if out == nil {
			out = make(map[string]inventory.HostProcess, len(old))
			for k2, v := range old {
				out[k2] = v
			}
		}
		cur, ok := seen[k]
		if ok && cur.Pid == o.Pid && sameLegacyProcess(o, cur, f.Procs[cur.Pid].Argv) {
			o.StartTime, o.UID = cur.StartTime, cur.UID
			if o.FirstSeen == nil {
				o.FirstSeen = o.DetectedAt
			}
		}
		if !keepSecrets { // the reference recorded argv as it was
			o.Cmdline = facts.Cmdline(redact.Args([]string{o.Cmdline}))
		}
		out[k] = o
	}
	if out == nil {
		return old
	}
	return out
}

// sameLegacyProcess compares a reference entry with a running process:
// its user, then its command line as the reference wrote it (raw) or as
// this daemon writes it.
func sameLegacyProcess(old, cur inventory.HostProcess, argv []string) bool {
	user := old.User == cur.User ||
		(old.User == classify.Unknown && cur.User == strconv.FormatUint(uint64(cur.UID), 10))
	if !user {
		return false
	}
	if old.Cmdline == cur.Cmdline {
		return true
	}
	// The reference did not cap its command lines: compare capped.
	return len(argv) > 0 && facts.Cmdline([]string{old.Cmdline}) == facts.Cmdline(argv)
}
