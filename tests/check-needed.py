#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""check-needed.py LIB.so NEEDED... [--allow-sanitizers]: the shared
library's DT_NEEDED entries (readelf -d) are exactly the ones given (in a
sanitizer build, the sanitizer runtimes may come on top)."""
import re
import subprocess
import sys

argv = sys.argv[1:]
allow_san = '--allow-sanitizers' in argv
argv = [a for a in argv if a != '--allow-sanitizers']
so, want = argv[0], set(argv[1:])
out = subprocess.run(['readelf', '-d', so], check=True, capture_output=True,
                     text=True).stdout
needed = set(re.findall(r'\(NEEDED\)\s+Shared library: \[([^\]]+)\]', out))
extra = needed - want
if allow_san:
    extra = {n for n in extra
             if not re.match(r'lib(asan|ubsan|tsan|lsan)\.so', n)}
print(f'{so}: NEEDED {" ".join(sorted(needed))}')
if extra or want - needed:
    print(f'expected NEEDED {" ".join(sorted(want))}; '
          f'unexpected: {" ".join(sorted(extra)) or "-"}; '
          f'missing: {" ".join(sorted(want - needed)) or "-"}')
    sys.exit(1)
