package seal

import "fmt"

// Status is what Chain.Next found of one line.
type Status int

// Line statuses.
const (
	OK       Status = iota // sealed, valid, next in the chain
	Unsealed               // no seal: not written by the daemon (or before sealing)
	BadMAC                 // a seal that does not match the line: edited or forged
	Replayed               // a valid line already seen, or one from before the chain's head: copied or reordered
	Gap                    // valid, but lines are missing before it: deleted (or reordered)
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Unsealed:
		return "not sealed"
	case BadMAC:
		return "seal does not match the line (edited or forged)"
	case Replayed:
		return "a sealed line out of order (copied or moved)"
	case Gap:
		return "lines missing before this one (deleted or moved)"
	}
	return "?"
}

// Counts reports whether a line with this status is the daemon's own,
// unchanged: OK and Gap lines are (a Gap says something else is missing).
func (s Status) Counts() bool { return s == OK || s == Gap }

// Chain follows the seal chain over a stream of lines, oldest first
// (the archives, then the log). The first sealed line starts it: lines
// removed from the start of the oldest file cannot be told from an
// archive that logrotate expired.
type Chain struct {
	key     *Key
	head    Head
	started bool
}

// NewChain starts following a chain with key.
func NewChain(key *Key) *Chain { return &Chain{key: key} }

// Head is the chain's end so far, and whether any sealed line was seen.
func (c *Chain) Head() (Head, bool) { return c.head, c.started }

// Next checks one line (without its newline). For a Gap it also says how
// many sealed lines are missing.
func (c *Chain) Next(line []byte) (Status, uint64) {
	l := c.key.CheckLine(line)
	switch {
	case !l.Sealed:
		return Unsealed, 0
	case !l.Valid:
		return BadMAC, 0
	case !c.started:
		c.started = true
		c.head = Head{Seq: l.Seq, MAC: l.MAC}
		return OK, 0
	case l.Seq <= c.head.Seq:
		return Replayed, 0
	case l.Seq == c.head.Seq+1 && l.Prev == c.head.MAC:
		c.head = Head{Seq: l.Seq, MAC: l.MAC}
		return OK, 0
	}
	missing := l.Seq - c.head.Seq - 1
	c.head = Head{Seq: l.Seq, MAC: l.MAC}
	if missing == 0 { // right number, wrong predecessor: one was replaced
		missing = 1
	}
	return Gap, missing
}

// CheckEnd compares the chain's end with the head a trusted state
// recorded: a log whose last sealed line is before it lost lines at its
// end (the lines the state still queues, pending, are not missing).
func (c *Chain) CheckEnd(want Head, pending [][]byte) error {
	h := c.head
	for _, l := range pending {
		cl := c.key.CheckLine(l)
		if cl.Valid && cl.Seq == h.Seq+1 && cl.Prev == h.MAC {
			h = Head{Seq: cl.Seq, MAC: cl.MAC}
		}
	}
	switch {
	case h == want:
		return nil
	case h.Seq < want.Seq:
		return fmt.Errorf("the event log ends at sealed line %d, but the state file says the daemon wrote up to %d: lines were deleted from its end", h.Seq, want.Seq)
	case h.Seq == want.Seq:
		return fmt.Errorf("the event log's sealed line %d is not the one the state file records", h.Seq)
	}
	return nil // the log went on after the state was read
}
