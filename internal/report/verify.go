package report

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/event"
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
	if b, err := inventory.ReadBytes(statePath); err != nil {
		fail("%s: %v", statePath, err)
	} else {
		plain, serr := key.OpenState(b)
		switch {
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

	// The event log and its archives, oldest first, as one chain: a line
	// per file, for an empty one too.
	files, err := event.ArchiveNames(eventsPath)
	if _, lerr := os.Lstat(eventsPath); lerr == nil {
		files = append(files, eventsPath)
	}
	chain := seal.NewChain(key)
	summed, lines, good := 0, 0, 0
	failed := map[string]bool{}
	sumUpTo := func(file string) { // the summary of each file before file
		for ; summed < len(files) && files[summed] != file; summed++ {
			if !failed[files[summed]] {
				fmt.Fprintf(out, "     %s: %d lines, %d sealed and in order\n", files[summed], lines, good)
			}
			lines, good = 0, 0
		}
	}
	for e, rerr := range (event.Reader{Path: eventsPath, Archives: true}).Events(context.Background()) {
		f, n := e.Pos.File, e.Pos.Line
		sumUpTo(f)
		var notEvent *event.LineError
		switch {
		case errors.Is(rerr, event.ErrLineTooLong), len(bytes.TrimSpace(e.Raw)) == 0 && errors.As(rerr, &notEvent):
			continue
		case errors.Is(rerr, event.ErrNotRegular):
			fail("%s: skipped", rerr)
			continue
		case rerr != nil && !errors.As(rerr, &notEvent):
			fail("%v", rerr)
			failed[f] = true
			if len(files) == 0 {
				return false
			}
			continue
		}
		lines++
		status, missing := chain.Next(e.Raw)
		switch status {
		case seal.OK:
			good++
		case seal.Gap:
			good++
			fail("%s:%d: %d sealed lines missing before this one (deleted or moved)", f, n, missing)
		default:
			fail("%s:%d: %s", f, n, status)
		}
	}
	_ = err
	sumUpTo("")
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
