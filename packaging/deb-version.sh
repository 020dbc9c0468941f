#!/bin/sh
# Prints the Debian upstream version for `make deb`, from the Makefile's
# VERSION (`git describe --always --dirty`, or what `make deb VERSION=...`
# gave):
#
#   v1.2.3 / 1.2.3                 1.2.3
#   v1.2.3-5-gabc1234[-dirty]      1.2.3+git5.abc1234[+dirty]
#   1.2.3-rc1                      1.2.3~rc1 (sorts before 1.2.3)
#   abc1234[-dirty] (no tag)       0.0~git20261127023000.abc1234[+dirty]
#                                  (HEAD's commit time, UTC), so each
#                                  commit's build upgrades the one before
#
# A dirty tree sorts after its commit's clean build; two builds of the same
# dirty tree get the same version (`dpkg -i` reinstalls), so give an
# explicit VERSION to tell them apart. Exits 1, saying why, when the result
# is not a valid Debian version.
set -eu

v=${1:-}
v=${v#v}
dirty=
case $v in *-dirty) dirty=+dirty v=${v%-dirty} ;; esac

head=$(git rev-parse --short HEAD 2>/dev/null || true)
if [ -n "$head" ] && [ "$v" = "$head" ]; then
	when=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S HEAD)
	out=0.0~git$when.$v$dirty
else
	# tag-N-gHASH -> tag+gitN.HASH; any other '-' (1.2.3-rc1) -> '~'
	out=$(printf '%s\n' "$v" | sed -e 's/-\([0-9][0-9]*\)-g\([0-9a-f][0-9a-f]*\)$/+git\1.\2/' -e 's/-/~/g')$dirty
fi

if ! printf '%s\n' "$out" | grep -Eq '^[0-9][A-Za-z0-9.+~]*$'; then
	echo "deb-version.sh: cannot make a Debian version out of VERSION='${1:-}' (got '$out'): give one starting with a digit, e.g. make deb VERSION=1.2.3" >&2
	exit 1
fi
printf '%s\n' "$out"
