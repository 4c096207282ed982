#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The exec helper makes raw system calls only.

The helper and the intermediate process of lib/exec-helper.c run on the
caller thread's TLS while sharing its memory: a libc call there could
write the caller's errno, take a lock another thread holds, or run an
interposed function. This check disassembles the static library and
fails if any of their functions calls anything but cx_sys (the inline
system call) and, in the intermediate only, clone().

    check-exec-helper.py libcprxfer.a
"""
import re
import shutil
import subprocess
import sys

# Functions that run in the helper or the intermediate (static, so GCC
# may rename them with a .constprop/.isra suffix).
HELPER = {"helper_main", "spawn_main", "fallback", "kill_and_fall_back",
          "release", "wait_in", "mono_ms", "die", "cx_sys"}
ALLOWED = {"cx_sys"}
ALLOWED_IN = {"spawn_main": {"clone"}}
# Instrumentation of sanitizer builds, not calls of the code itself.
TOOLING = ("__asan_", "__ubsan_", "__sanitizer_", "__stack_chk_fail",
           "__tsan_", "__msan_")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if not shutil.which("objdump"):
        print("SKIP: no objdump")
        sys.exit(77)
    out = subprocess.run(["objdump", "-dr", "--no-show-raw-insn",
                          sys.argv[1]], capture_output=True, text=True,
                         check=True).stdout
    if "x86-64" not in out and "aarch64" not in out:
        print("SKIP: neither x86-64 nor aarch64")
        sys.exit(77)
    func = None
    seen = set()
    bad = []
    last_call = False
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if m:
            name = m.group(1).split(".")[0]
            func = name if name in HELPER else None
            if func:
                seen.add(func)
            last_call = False
            continue
        if not func:
            continue
        rel = re.match(r"^\s+[0-9a-f]+: (R_X86_64_PLT32|R_X86_64_PC32|"
                       r"R_AARCH64_CALL26|R_AARCH64_JUMP26)\s+(\S+)", line)
        if not rel:
            ins = re.match(r"^\s+[0-9a-f]+:\s+(\S+)", line)
            if ins:
                last_call = ins.group(1) in ("call", "callq", "jmp",
                                             "jmpq", "bl", "b")
            continue
        if last_call:
            target = re.split(r"[-+]0x", rel.group(2))[0]
            if target.startswith(TOOLING) or target in ALLOWED or \
               target in ALLOWED_IN.get(func, ()) or \
               target.split(".")[0] in HELPER:
                continue
            bad.append(f"{func} calls {target}")
    missing = {"helper_main", "spawn_main"} - seen
    if missing:
        sys.exit(f"check-exec-helper: not found in {sys.argv[1]}: "
                 f"{', '.join(sorted(missing))}")
    if bad:
        sys.exit("check-exec-helper: the helper calls more than raw "
                 "system calls:\n  " + "\n  ".join(bad))
    print(f"ok: {', '.join(sorted(seen))}: raw system calls only")


main()
