#!/bin/sh
# man.sh BINDIR OUTDIR: the man pages, ds01-detectord.8 and
# ds01-workloads.1, from docs/man/*.md with their OPTIONS made by the
# binaries themselves (the flags are documented once, in the code), through
# go-md2man (pinned in tools/go.mod). Run from the repository root (make man,
# make deb).
set -e
bindir=$1 out=$2
md2man=$(${GO:-go} -C tools tool -n go-md2man)
mkdir -p "$out"
"$bindir/ds01-detectord" --help-man-options > "$out/ds01-detectord.options.md"
"$bindir/ds01-workloads" __man-options > "$out/ds01-workloads.options.md"
for m in ds01-detectord.8 ds01-workloads.1; do
	grep -q '^@OPTIONS@$' "docs/man/$m.md" || { echo "man.sh: docs/man/$m.md has no @OPTIONS@ line" >&2; exit 1; }
	sed -e "/^@OPTIONS@\$/{r $out/${m%.*}.options.md" -e 'd' -e '}' "docs/man/$m.md" > "$out/$m.md"
	"$md2man" -in "$out/$m.md" -out "$out/$m"
	rm -f "$out/$m.md" "$out/${m%.*}.options.md"
done
