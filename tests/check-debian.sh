#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The Debian packages, built and used as a Debian user would (a stage of
# tests/run-all; SKIP_DEBIAN=1 skips it):
#   1. builds libcprxfer0, libcprxfer-seccomp0, libcprxfer-systemd0,
#      libcprxfer-dev, libcprxfer-seccomp-dev, libcprxfer-systemd-dev and
#      cprxfer-tools with
#      `dpkg-buildpackage -us -uc -b` from the committed tree (git HEAD);
#   2. installs libcprxfer-dev and cprxfer-tools (and what they depend
#      on: libcprxfer0, not the seccomp or systemd packages) with
#      `apt-get install ./*.deb` into a scratch root;
#   3. in that root, as root: builds examples/state-handoff.c with
#      `cc $(pkg-config --cflags --libs cprxfer)` alone and runs it;
#      checks that ldd of that program lists no libseccomp, that
#      `man 3 cprxfer_save`, `man 7 cprxfer` and `man 1 cprxfer-inspect`
#      find their pages, and that `cprxfer-inspect --json` of a state
#      file written by a program built against the package lists its
#      records (valid JSON);
#   4. with LINTIAN=1, runs lintian on the result (fails on errors).
#
# The scratch root is an overlay of this machine's root file system: a
# tmpfs upper layer over a read-only view of /, entered with chroot, with
# its own /proc, /dev, /tmp and an empty /usr/local. It has no libcprxfer
# other than what the packages install (checked first), so it answers
# the same questions as a fresh Debian root with the build tools
# installed, in seconds instead of the minutes a debootstrap takes; the
# host is not modified. Docker's dpkg path excludes (which would drop
# /usr/share/man) are removed in the overlay, as a Debian install has
# none. Must run as root (mount, chroot); skips (exit 77) otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD

say() { printf 'check-debian: %s\n' "$*"; }
t0=$SECONDS

if [ "${SKIP_DEBIAN:-0}" = 1 ]; then
	say "skipped (SKIP_DEBIAN=1)"
	exit 0
fi
if [ ! -f lib/libcprxfer-seccomp.sym ]; then
	# debian/ packages libcprxfer-seccomp0 apart from libcprxfer0.
	say "skipped: the seccomp helper is not a library of its own yet"
	exit 77
fi
if [ "$(id -u)" != 0 ]; then
	say "skipped: needs root (mount, chroot)"
	exit 77
fi

deps="build-essential dpkg-dev debhelper meson ninja-build pkg-config libseccomp-dev libsystemd-dev lowdown
python3 gcc libc6-dev man-db"
[ "${LINTIAN:-0}" = 1 ] && deps="$deps lintian"
missing=""
for p in $deps; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "ok installed" >/dev/null ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

W=$(mktemp -d /tmp/cprxfer-debian-XXXXXX)
R=$W/root
cleanup() {
	local m
	# Everything mounted below $W, deepest first.
	for m in $(findmnt -rn -o TARGET | grep "^$W" | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m" || true
	done
	if findmnt -rn -o TARGET | grep "^$W" >/dev/null; then
		say "could not unmount everything under $W; left in place"
		return
	fi
	rm -rf --one-file-system "$W"
}
trap cleanup EXIT

# 1. the packages, from a clean copy of the committed tree
t1=$SECONDS
mkdir -p "$W/pkg/src"
git archive --format=tar HEAD | tar -xf - -C "$W/pkg/src"
(
	cd "$W/pkg/src"
	DEB_BUILD_OPTIONS="nocheck noddebs parallel=2" \
		dpkg-buildpackage -us -uc -b >"$W/pkg/build.log" 2>&1
) || {
	tail -40 "$W/pkg/build.log"
	say "dpkg-buildpackage FAILED"
	exit 1
}
if grep -q "dpkg-gensymbols: warning" "$W/pkg/build.log"; then
	# New exported functions: list them in debian/*.symbols.
	say "warning: debian/*.symbols differ from the libraries' symbols:"
	grep -E "^[-+] [A-Za-z_]" "$W/pkg/build.log" | sed 's/^/  /'
fi
say "packages built in $((SECONDS - t1)) s:"
(cd "$W/pkg" && ls -- *.deb | sed 's/^/  /')
if [ "${LINTIAN:-0}" = 1 ]; then
	t1=$SECONDS
	lintian --fail-on error --pedantic "$W"/pkg/*.changes ||
		{ say "lintian reports errors"; exit 1; }
	say "lintian: no errors ($((SECONDS - t1)) s)"
fi

# 2. the scratch root: tmpfs upper layer over /
mkdir -p "$W/ov"
mount -t tmpfs -o mode=0755 cprxfer-debian "$W/ov"
mkdir -p "$W/ov/upper" "$W/ov/work" "$R"
mount -t overlay overlay \
	-o "lowerdir=/,upperdir=$W/ov/upper,workdir=$W/ov/work" "$R"
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
mount --make-private "$R/dev"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t tmpfs -o mode=0755 usrlocal "$R/usr/local"
mkdir -p "$R/root/debs" "$R/root/src"
cp "$W"/pkg/*.deb "$R/root/debs/"
cp "$src/examples/state-handoff.c" "$R/root/src/"
rm -f "$R"/etc/dpkg/dpkg.cfg.d/docker* "$R"/etc/dpkg/dpkg.cfg.d/excludes

in_root() {
	env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
		chroot "$R" /bin/bash -euo pipefail -c "$1"
}

# 3. install and use
in_root '
cd /root
if ls /usr/lib/*/libcprxfer* /usr/include/cprxfer 2>/dev/null | grep . >/dev/null; then
	echo "check-debian: this root already has libcprxfer" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q /root/debs/libcprxfer0_*.deb \
	/root/debs/libcprxfer-dev_*.deb /root/debs/cprxfer-tools_*.deb \
	>apt.log 2>&1 ||
	{ cat apt.log; exit 1; }
dpkg-query -W -f="\${db:Status-Abbrev} \${Package} \${Version}\n" \
	"libcprxfer*" cprxfer-tools | grep "^ii" | sed "s/^ii */  installed: /"
for p in libcprxfer-seccomp0 libcprxfer-systemd0; do
	if dpkg-query -W -f="\${Status}\n" $p 2>/dev/null |
		grep "ok installed" >/dev/null; then
		echo "check-debian: libcprxfer-dev pulled in $p" >&2
		exit 1
	fi
done

flags=$(pkg-config --cflags --libs cprxfer)
echo "  pkg-config --cflags --libs cprxfer: $flags"
cc -Wall -Werror -o state-handoff src/state-handoff.c $flags
./state-handoff >handoff.log 2>&1 || { cat handoff.log; exit 1; }
echo "  examples/state-handoff.c built with pkg-config alone: ran, exit 0"
ldd ./state-handoff >ldd.txt
sed "s/^/  ldd: /" ldd.txt
if grep -q libseccomp ldd.txt; then
	echo "check-debian: a program without seccomp loads libseccomp" >&2
	exit 1
fi
grep -Eq "libcprxfer.so.0 => (/usr)?/lib/" ldd.txt

for page in "3 cprxfer_save" "3 cprxfer" "7 cprxfer" "1 cprxfer-inspect" \
	"3 cprxfer_seccomp_allow"; do
	MANWIDTH=80 man $page 2>man.err | col -bx >man.txt || true
	name=${page#* }
	grep -Eq "^ *(libcprxfer, +)?$name +- " man.txt || {
		echo "check-debian: man $page does not show its page" >&2
		head -20 man.txt man.err; exit 1; }
	echo "  man $page: $(grep -m1 -E " +- " man.txt | sed "s/^ *//; s/  */ /g")"
done

cat >save.c <<EOF
#include <cprxfer/cprxfer.h>
#include <stdio.h>
int main(int argc, char **argv)
{
	cprxfer_state *st = cprxfer_state_new();
	int rc = !st || argc < 2 || cprxfer_put_u64(st, "vcpus", 2) ||
		 cprxfer_put_str(st, "serial.path", "/dev/ttyS0") ||
		 cprxfer_save_file(st, argv[1]);
	if (rc)
		fprintf(stderr, "save: %s\n", cprxfer_errmsg());
	cprxfer_state_free(st);
	return rc;
}
EOF
cc -o save save.c $(pkg-config --cflags --libs cprxfer)
./save /tmp/state
cprxfer-inspect --json /tmp/state >inspect.json
python3 -m json.tool inspect.json >/dev/null
grep -q "\"name\": \"vcpus\"" inspect.json
grep -q "\"ok\": true" inspect.json
echo "  cprxfer-inspect --json of a state file: valid JSON, $(grep -c "\"offset\"" inspect.json) records"
'
say "passed in $((SECONDS - t0)) s"
