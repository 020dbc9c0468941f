package workloads

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// maxShown caps the problems Verify prints one by one.
const maxShown = 20

// Verify checks the seals of the state file and of the event log and its
// archives with key, and prints what it finds to out: the first problems
// (file and line) and a summary. It returns whether everything verified:
// every line sealed, unchanged and in order, no line missing between two
// sealed lines or after the last one the state records, and the state's
// own seal right.
func Verify(key *seal.Key, eventsPath, statePath string, out io.Writer) bool {
	ok := true
	problems := 0
	fail := func(format string, a ...any) {
		ok = false
		problems++
		if problems <= maxShown {
			fmt.Fprintf(out, "FAIL "+format+"\n", a...)
		}
	}

	// The state file.
	var head *seal.Head
	var pending [][]byte
	if f, err := openRegular(statePath); err != nil {
		fail("%s: %v", statePath, err)
	} else {
		b, err := io.ReadAll(io.LimitReader(f, inventory.MaxFileBytes+1))
		f.Close()
		plain, serr := key.OpenState(b)
		switch {
		case err != nil:
			fail("%s: %v", statePath, err)
		case errors.Is(serr, seal.ErrUnsealed):
			fail("%s: not sealed: not written by a sealing ds01-detectord (or written by someone else)", statePath)
		case serr != nil:
			fail("%s: %v", statePath, serr)
		default:
			st, err := inventory.Parse(plain)
			if err != nil {
				fail("%s: sealed but does not parse: %v", statePath, err)
				break
			}
			fmt.Fprintf(out, "ok   %s: sealed\n", statePath)
			if h, ok := seal.ParseHead(st.SealHead); ok {
				head = &h
			}
			for _, l := range st.UnloggedEvents {
				pending = append(pending, []byte(l))
			}
		}
	}

	// The event log and its archives, oldest first, as one chain.
	files, err := logFiles(eventsPath)
	if err != nil {
		fail("%v", err)
		return false
	}
	chain := seal.NewChain(key)
	for _, f := range files {
		lines, good := 0, 0
		err := readLines(f, func(msg string) { fail("%s", msg) }, func(n int, line []byte) {
			if len(bytes.TrimSpace(line)) == 0 {
				return
			}
			lines++
			status, missing := chain.Next(line)
			switch status {
			case seal.OK:
				good++
			case seal.Gap:
				good++
				fail("%s:%d: %d sealed lines missing before this one (deleted or moved)", f, n, missing)
			default:
				fail("%s:%d: %s", f, n, status)
			}
		})
		if err != nil {
			fail("%s: %v", f, err)
			continue
		}
		fmt.Fprintf(out, "     %s: %d lines, %d sealed and in order\n", f, lines, good)
	}
	if head != nil {
		if err := chain.CheckEnd(*head, pending); err != nil {
			fail("%s: %v", eventsPath, err)
		}
	}
	if problems > maxShown {
		fmt.Fprintf(out, "... and %d more problems\n", problems-maxShown)
	}
	if ok {
		fmt.Fprintln(out, "verified: every line and the state file as the daemon wrote them")
	} else {
		fmt.Fprintf(out, "NOT verified: %d problems\n", problems)
	}
	return ok
}
