#!/bin/sh
# SPDX-License-Identifier: MIT
# mkarchive.sh OUT.a IN.a: the installed static library. Every object of
# IN.a is linked into one relocatable object whose hidden symbols (the
# internal cx_* functions and tables, compiled with -fvisibility=hidden)
# are then made local, so that OUT.a exposes the same symbols as the .so:
# an application that defines its own cx_crc32c keeps the library's.
set -eu
out=$1 in=$2
obj=${out%.a}.o
rm -f "$out" "$obj"
${LD:-ld} -r --whole-archive "$in" -o "$obj"
${OBJCOPY:-objcopy} --localize-hidden "$obj"
${AR:-ar} rcD "$out" "$obj"
rm -f "$obj"
