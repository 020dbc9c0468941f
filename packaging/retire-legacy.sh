#!/bin/sh
# Retires the Python scanner (detect-workloads.py) for good: its timer and
# service are stopped, disabled, their unit files moved out of
# /etc/systemd/system, and both units masked, so that the scanner cannot
# run next to ds01-detectord and write the same state file.
#
# Called by the package's postinst (installed as
# /usr/lib/ds01-detectord/retire-legacy.sh) and by `make deploy`. Safe to
# run again: a unit that is already masked is left alone, silently.
#
# Why move the files: `systemctl mask` refuses to replace a unit file in
# /etc/systemd/system, which is where the upstream deploy.sh copies them.
# They go to /var/backups/ds01-detectord/ (the admin's files, kept for
# going back: docs/MIGRATION.md), with a timestamp suffix if a backup of
# that name exists. Once masked, /etc/systemd/system/<unit> is a symlink
# to /dev/null: a later `cp` by deploy.sh writes through it into /dev/null,
# the mask stays, and its `systemctl enable --now` fails with "Unit file
# ... is masked" instead of starting a second writer.
#
# Only units this host has are masked: a unit file in /etc/systemd/system
# or anywhere systemd finds one, or the ds01-infra checkout that deploy.sh
# copies them from (it would install them later). A host that never had
# the Python scanner is left alone. Every action is reported on stderr.
# Nothing here unmasks.
set -e

LEGACY_UNITS="ds01-workload-detector.timer ds01-workload-detector.service"
UNITDIR=/etc/systemd/system
BACKUPDIR=/var/backups/ds01-detectord

say() { echo "ds01-detectord: $*" >&2; }

booted=false
[ -d /run/systemd/system ] && booted=true

changed=false
for unit in $LEGACY_UNITS; do
	f=$UNITDIR/$unit
	if [ -L "$f" ] && [ "$(readlink "$f")" = /dev/null ]; then
		continue # masked already
	fi
	if [ ! -e "$f" ] && [ ! -L "$f" ] && [ ! -e "/opt/ds01-infra/config/systemd/$unit" ] &&
		! systemctl list-unit-files --no-legend "$unit" 2>/dev/null | grep -q "^$unit"; then
		continue # never installed here: nothing to retire
	fi
	changed=true
	# The timer comes first in the list, so it cannot start the service
	# again once that is stopped.
	if $booted && systemctl --quiet is-active "$unit" 2>/dev/null; then
		if systemctl stop "$unit"; then
			say "stopped $unit"
		else
			say "could not stop $unit: masking it anyway"
		fi
	fi
	# Disable while the unit file is still there: its [Install] section
	# names the symlinks to remove (timers.target.wants/...).
	if [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" = enabled ]; then
		systemctl disable --quiet "$unit"
		say "disabled $unit"
	fi
	if [ -e "$f" ] || [ -L "$f" ]; then
		mkdir -p "$BACKUPDIR"
		dest=$BACKUPDIR/$unit
		[ ! -e "$dest" ] && [ ! -L "$dest" ] || dest=$dest.$(date -u +%Y%m%dT%H%M%SZ)
		mv "$f" "$dest"
		say "moved $f to $dest"
	fi
	# systemctl mask works offline too (chroot, no systemd running); the
	# symlink is what it would make.
	systemctl mask --quiet "$unit" 2>/dev/null || ln -s /dev/null "$f"
	say "masked $unit (the Python scanner's; to go back, see MIGRATION.md in the docs)"
done

if $changed && $booted; then
	systemctl daemon-reload
fi
