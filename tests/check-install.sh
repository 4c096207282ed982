#!/bin/sh
# SPDX-License-Identifier: MIT
# Install into a scratch root, then build and run a program the way an
# outside project would: with nothing but `pkg-config --cflags --libs
# cprxfer`. Checks the headers, the .pc file, both libraries and SONAME.
set -eu
build=$1 src=$2
dest=$(mktemp -d /tmp/cprxfer-install-XXXXXX)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --quiet >/dev/null
pc=$(find "$dest" -name cprxfer.pc | head -1)
[ -n "$pc" ] || { echo "no cprxfer.pc installed"; exit 1; }
export PKG_CONFIG_PATH="${pc%/*}" PKG_CONFIG_SYSROOT_DIR="$dest"
flags=$(pkg-config --cflags --libs cprxfer)
echo "pkg-config: $flags"
for h in cprxfer.h seccomp.h version.h; do
	find "$dest" -path "*/include/cprxfer/$h" | grep -q . ||
		{ echo "header $h not installed"; exit 1; }
done
so=$(find "$dest" -name 'libcprxfer.so.0' | head -1)
find "$dest" -name 'libcprxfer.a' | grep -q . || { echo "no libcprxfer.a"; exit 1; }
readelf -d "$so" | grep -q 'SONAME.*libcprxfer.so.0' || { echo "bad SONAME"; exit 1; }
# shellcheck disable=SC2086
cc -Wall -Werror -o "$dest/state-handoff" "$src/examples/state-handoff.c" $flags
LD_LIBRARY_PATH="${so%/*}" "$dest/state-handoff"
