#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""One library's exported symbols, its version script and its public
headers name the same functions, and nothing else leaks out: neither
from the shared library (nm -D) nor from the installed static archive
(nm: no defined global symbol outside cprxfer_*, and no test hook).

  check-symbols.py --so LIB.so --archive LIB.a --symfile LIB.sym \\
                   --header H [--header H...]

Symbols in a version node named *_PRIVATE are for the project's own
libraries: exported, but declared in no public header."""
import argparse
import re
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument('--so', required=True)
ap.add_argument('--archive')
ap.add_argument('--symfile', required=True)
ap.add_argument('--header', action='append', default=[])
args = ap.parse_args()

public, private, nodes = set(), set(), set()
for m in re.finditer(r'^([\w.]+)\s*\{(.*?)\}', open(args.symfile).read(),
                     re.M | re.S):
    nodes.add(m.group(1))
    names = set(re.findall(r'^\s*(cprxfer_\w+);', m.group(2), re.M))
    (private if m.group(1).endswith('_PRIVATE') else public).update(names)
script = public | private

declared = set()
for h in args.header:
    declared |= set(re.findall(r'\b(cprxfer_\w+)\s*\(', open(h).read()))


def nm(*a):
    return subprocess.run(['nm', *a], check=True, capture_output=True,
                          text=True).stdout


exported = set()
for line in nm('-D', '--defined-only', args.so).splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in 'TDBRWiuV':
        exported.add(parts[2].split('@')[0])
exported -= nodes

bad = False


def report(what, names):
    global bad
    if names:
        print(f'{what}: {" ".join(sorted(names))}')
        bad = True


report('exported but not in the version script', exported - script)
report('in the version script but not exported', script - exported)
report('exported but not declared in a header', exported - declared - private)
report('declared in a header but not exported', declared - exported)
report('private but declared in a public header', private & declared)
report('symbols outside cprxfer_',
       {s for s in exported if not s.startswith('cprxfer_')})
print(f'{args.so}: {len(exported)} exported symbols checked '
      f'({len(private)} private)')

if args.archive:
    # nm on an archive: "member:" headers, then "value type name" lines;
    # upper-case types are global (U: undefined, not ours).
    glob, hooks = set(), set()
    for line in nm('--defined-only', args.archive).splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        if parts[1].isupper():
            glob.add(parts[2])
        if 'hook' in parts[2]:
            hooks.add(parts[2])
    report(f'{args.archive}: global symbols outside cprxfer_',
           {s for s in glob if not s.startswith('cprxfer_')})
    report(f'{args.archive}: global here, not exported by the .so',
           {s for s in glob if s.startswith('cprxfer_')} - exported)
    report(f'{args.archive}: not global here, exported by the .so',
           exported - glob)
    report(f'{args.archive}: test hooks in a release library', hooks)
    print(f'{args.archive}: {len(glob)} global symbols checked')
sys.exit(1 if bad else 0)
