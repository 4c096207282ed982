#!/bin/sh
# SPDX-License-Identifier: MIT
# check-consumer.sh BUILD SRC: build tests/consumer/, an outside meson
# project, both ways a consumer would, and run what it builds:
#   1. installed: `meson install` of BUILD into a scratch root, found by
#      pkg-config alone (--wrap-mode=nofallback: no subproject);
#   2. as a subproject: a scratch parent project whose
#      subprojects/cprxfer is a symlink to SRC (--wrap-mode=forcefallback:
#      never the installed copy), so dependency('cprxfer') is answered by
#      the library's meson.override_dependency().
set -eu
build=$1 src=$2
tmp=$(mktemp -d /tmp/cprxfer-consumer-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
setup() { meson setup "$@" >"$tmp/setup.log" 2>&1 || { cat "$tmp/setup.log"; exit 1; }; }
compile() { ninja -C "$1" >"$tmp/ninja.log" 2>&1 || { cat "$tmp/ninja.log"; exit 1; }; }

echo "== installed, through pkg-config"
meson install -C "$build" --destdir "$tmp/root" --quiet >/dev/null
pc=$(find "$tmp/root" -name cprxfer.pc | head -1)
export PKG_CONFIG_PATH="${pc%/*}" PKG_CONFIG_SYSROOT_DIR="$tmp/root"
setup "$tmp/inst" "$src/tests/consumer" --wrap-mode=nofallback
compile "$tmp/inst"
# A non-system prefix: the loader needs to be told where the library is
# (README, "Using it": LD_LIBRARY_PATH, an rpath, or ldconfig).
libdir="$tmp/root$(pkg-config --variable=libdir cprxfer | sed "s|^$tmp/root||")"
LD_LIBRARY_PATH="$libdir" "$tmp/inst/consumer"
if LD_LIBRARY_PATH="$libdir" ldd "$tmp/inst/consumer" | grep -q libseccomp; then
	echo "consumer (no seccomp) loads libseccomp"
	exit 1
fi
if [ -f "$build/cprxfer-seccomp.pc" ]; then
	LD_LIBRARY_PATH="$libdir" "$tmp/inst/consumer-seccomp"
fi
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR

echo "== as a subproject (subprojects/cprxfer -> the source tree)"
mkdir -p "$tmp/parent/subprojects"
cp "$src"/tests/consumer/meson.build "$src"/tests/consumer/*.c "$tmp/parent/"
ln -s "$(cd "$src" && pwd)" "$tmp/parent/subprojects/cprxfer"
setup "$tmp/sub" "$tmp/parent" --wrap-mode=forcefallback
compile "$tmp/sub"
grep -q "tests: off in a subproject" "$tmp/setup.log" ||
	{ echo "the subproject built its tests"; exit 1; }
"$tmp/sub/consumer"
if [ -f "$build/cprxfer-seccomp.pc" ]; then
	"$tmp/sub/consumer-seccomp"
fi
