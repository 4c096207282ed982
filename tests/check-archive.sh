#!/bin/sh
# SPDX-License-Identifier: MIT
# check-archive.sh BUILD SRC: install into a scratch root, then link
# tests/archive-crc32c.c (an application with its own cx_crc32c) against
# the installed static libcprxfer.a and run it: the library keeps its
# own checksum (see that file).
set -eu
build=$1 src=$2
dest=$(mktemp -d /tmp/cprxfer-archive-XXXXXX)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --quiet >/dev/null
pc=$(find "$dest" -name cprxfer.pc | head -1)
a=$(find "$dest" -name libcprxfer.a | head -1)
[ -n "$pc" ] && [ -n "$a" ] || { echo "no cprxfer.pc / libcprxfer.a installed"; exit 1; }
export PKG_CONFIG_PATH="${pc%/*}" PKG_CONFIG_SYSROOT_DIR="$dest"
# The archive itself, not -lcprxfer (which would pick the .so), plus
# what pkg-config --static says a static link needs.
# shellcheck disable=SC2046
cc -Wall -Werror -o "$dest/archive-crc32c" "$src/tests/archive-crc32c.c" \
	$(pkg-config --cflags cprxfer) "$a" \
	$(pkg-config --static --libs-only-other --libs-only-l cprxfer | sed 's/-lcprxfer//')
if readelf -d "$dest/archive-crc32c" | grep -q 'NEEDED.*libcprxfer'; then
	echo "archive-crc32c is linked to the .so, not the archive"
	exit 1
fi
mkdir "$dest/work"
"$dest/archive-crc32c" "$dest/work"
