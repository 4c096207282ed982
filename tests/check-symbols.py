#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The version script, the public headers and the library's exported
symbols must name the same functions, and nothing else may leak out."""
import re
import subprocess
import sys

so, symfile = sys.argv[1], sys.argv[2]
headers = sys.argv[3:]

script = set(re.findall(r'^\s*(cprxfer_\w+);', open(symfile).read(), re.M))
declared = set()
for h in headers:
    text = open(h).read()
    declared |= set(re.findall(r'\b(cprxfer_\w+)\s*\(', text))
out = subprocess.run(['nm', '-D', '--defined-only', so], check=True,
                     capture_output=True, text=True).stdout
exported = set()
for line in out.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in 'TDBRW':
        exported.add(parts[2].split('@')[0])
exported.discard('CPRXFER_0.1')

bad = False
for what, a, b in (('exported but not in the version script', exported, script),
                   ('in the version script but not exported', script, exported),
                   ('exported but not declared in a header', exported, declared),
                   ('declared in a header but not exported', declared, exported)):
    d = sorted(a - b)
    if d:
        print(f'{what}: {" ".join(d)}')
        bad = True
leaks = sorted(s for s in exported if not s.startswith(('cprxfer_', 'CPRXFER_')))
if leaks:
    print('symbols outside cprxfer_: ' + ' '.join(leaks))
    bad = True
print(f'{len(exported)} exported symbols checked')
sys.exit(1 if bad else 0)
