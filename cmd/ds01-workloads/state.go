package main

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/ds01/ds01-detectord/internal/safefile"
	"github.com/ds01/ds01-detectord/internal/seal"
	"github.com/ds01/ds01-detectord/pkg/inventory"
)

// load reads a state file for display (inventory.ReadBytes: a FIFO or
// anything else planted at the path fails at once). Unlike the daemon, it
// never moves a corrupt file aside: it only reports it.
func load(path string) (inventory.State, error) { return loadVerified(path, nil) }

// loadVerified is load that, with a key, checks the state file's seal
// first: an error wrapping seal.ErrUnsealed or seal.ErrBadSeal when it
// fails.
func loadVerified(path string, key *seal.Key) (inventory.State, error) {
	b, err := inventory.ReadBytes(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return inventory.State{}, fmt.Errorf("state file %s does not exist: is the detector installed and running? Check 'systemctl status ds01-detectord'", path)
		}
		if errors.Is(err, safefile.ErrNotRegular) { // a FIFO, a symlink: planted, not the detector's
			return inventory.State{}, fmt.Errorf("cannot read state file %s: %v", path, err)
		}
		return inventory.State{}, fmt.Errorf("cannot read state file %s: %v (check its permissions; the detector writes it 0644)", path, err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return inventory.State{}, fmt.Errorf("state file %s is empty: check 'systemctl status ds01-detectord' and the disk it lives on", path)
	}
	if key != nil {
		plain, err := key.OpenState(b)
		if err != nil {
			return inventory.State{}, err
		}
		b = plain
	}
	st, err := inventory.Parse(b)
	if err != nil {
		return inventory.State{}, fmt.Errorf("state file %s is corrupt: %v (check 'journalctl -u ds01-detectord'; the detector rewrites it each cycle)", path, err)
	}
	return st, nil
}
