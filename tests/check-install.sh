#!/bin/sh
# SPDX-License-Identifier: MIT
# Install into a scratch root, then build and run a program the way an
# outside project would: with nothing but `pkg-config --cflags --libs
# cprxfer`. Checks the headers, the .pc files, both libraries and their
# SONAMEs; and, when libcprxfer-seccomp is built, that its .pc brings
# libseccomp and the core library.
set -eu
build=$1 src=$2
dest=$(mktemp -d /tmp/cprxfer-install-XXXXXX)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --quiet >/dev/null
pc=$(find "$dest" -name cprxfer.pc | head -1)
[ -n "$pc" ] || { echo "no cprxfer.pc installed"; exit 1; }
grep -q 'example.invalid' "$pc" && { echo "cprxfer.pc: placeholder URL"; exit 1; }
export PKG_CONFIG_PATH="${pc%/*}" PKG_CONFIG_SYSROOT_DIR="$dest"
flags=$(pkg-config --cflags --libs cprxfer)
echo "pkg-config cprxfer: $flags"
for h in cprxfer.h version.h; do
	find "$dest" -path "*/include/cprxfer/$h" | grep -q . ||
		{ echo "header $h not installed"; exit 1; }
done
so=$(find "$dest" -name 'libcprxfer.so.0' | head -1)
find "$dest" -name 'libcprxfer.a' | grep -q . || { echo "no libcprxfer.a"; exit 1; }
readelf -d "$so" | grep -q 'SONAME.*libcprxfer.so.0' || { echo "bad SONAME"; exit 1; }
# shellcheck disable=SC2086
cc -Wall -Werror -o "$dest/state-handoff" "$src/examples/state-handoff.c" $flags
# A program that does not sandbox loads no libseccomp.
if LD_LIBRARY_PATH="${so%/*}" ldd "$dest/state-handoff" | grep -q libseccomp; then
	echo "state-handoff loads libseccomp"
	exit 1
fi
LD_LIBRARY_PATH="${so%/*}" "$dest/state-handoff"

# libcprxfer-seccomp, when built: header, .pc, SONAME, and a program
# that uses it links with its pkg-config flags alone.
if [ -f "$build/cprxfer-seccomp.pc" ]; then
	find "$dest" -path "*/include/cprxfer/seccomp.h" | grep -q . ||
		{ echo "header seccomp.h not installed"; exit 1; }
	sso=$(find "$dest" -name 'libcprxfer-seccomp.so.0' | head -1)
	[ -n "$sso" ] || { echo "no libcprxfer-seccomp.so.0"; exit 1; }
	readelf -d "$sso" | grep -q 'SONAME.*libcprxfer-seccomp.so.0' ||
		{ echo "bad SONAME of libcprxfer-seccomp"; exit 1; }
	find "$dest" -name 'libcprxfer-seccomp.a' | grep -q . ||
		{ echo "no libcprxfer-seccomp.a"; exit 1; }
	sflags=$(pkg-config --cflags --libs cprxfer-seccomp)
	echo "pkg-config cprxfer-seccomp: $sflags"
	cat >"$dest/sandbox.c" <<'C'
#include <stdio.h>
#include <cprxfer/seccomp.h>
int main(void)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	int rc = ctx ? cprxfer_seccomp_allow(ctx, CPRXFER_MODE_TRANSFER) : -1;
	int bad = cprxfer_seccomp_allow(ctx, 0);

	printf("allow: %d; modes 0: %d (%s)\n", rc, bad, cprxfer_errmsg());
	seccomp_release(ctx);
	return rc == 0 && bad < 0 && *cprxfer_errmsg() ? 0 : 1;
}
C
	# shellcheck disable=SC2086
	cc -Wall -Werror -o "$dest/sandbox" "$dest/sandbox.c" $sflags
	LD_LIBRARY_PATH="${so%/*}" "$dest/sandbox"
fi
