#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Every exported function has a reference page and a test.

For each function in the public version nodes of every library's version
script (lib/*.sym, lib/*/*.sym; not the *_PRIVATE nodes):
  - docs/ref/<name>.md exists and has the sections SYNOPSIS, DESCRIPTION,
    RETURN VALUE and EXAMPLE;
  - the name is used (outside comments and string literals) by a test
    source: tests/**/*.c, or a C file of examples/ built into a binary
    that a test runs.

With MAN_DIR (the build's docs/ directory, where the man pages are
generated from docs/ref/*.md and docs/man/*.md):
  - MAN_DIR/<name>.3 exists for every exported function (its own page or
    a ".so" link to the page that documents it), and so do cprxfer(3)
    and cprxfer(7);
  - its NAME section names the function;
  - `mandoc -T lint` reports nothing for any page in MAN_DIR (skipped
    with a note when mandoc is not installed), and neither does groff
    through `man --warnings` (what lintian checks).

Prints what is missing and exits 1 if anything is.
Usage: check-docs.py SOURCE_ROOT [MAN_DIR]
"""
import glob
import os
import re
import shutil
import subprocess
import sys

SECTIONS = ('SYNOPSIS', 'DESCRIPTION', 'RETURN VALUE', 'EXAMPLE')

root = sys.argv[1] if len(sys.argv) > 1 else \
    os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
man_dir = sys.argv[2] if len(sys.argv) > 2 else None


def read(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def exported():
    """Public functions of every library's version script (lib/*.sym,
    lib/*/*.sym), outside the *_PRIVATE nodes."""
    names = set()
    syms = glob.glob(os.path.join(root, 'lib', '*.sym')) + \
        glob.glob(os.path.join(root, 'lib', '*', '*.sym'))
    for sym in sorted(syms):
        text = read(sym)
        for m in re.finditer(r'^([\w.]+)\s*\{(.*?)\}', text, re.M | re.S):
            if not m.group(1).endswith('_PRIVATE'):
                names |= set(re.findall(r'\b(cprxfer_\w+)\s*;', m.group(2)))
    return sorted(names)


def check_man(names):
    """Problems with the generated man pages in man_dir."""
    bad = []
    pages = sorted(glob.glob(os.path.join(man_dir, '*.[1-8]')))
    for n in names + ['cprxfer']:
        page = os.path.join(man_dir, n + '.3')
        if not os.path.exists(page):
            bad.append(f'no man page {n}.3')
            continue
        text = read(page)
        so = re.match(r'^\.so\s+(\S+)', text)
        if so:
            target = os.path.join(man_dir, os.path.basename(so.group(1)))
            if not os.path.exists(target):
                bad.append(f'{n}.3: .so to a missing page {so.group(1)}')
            continue
        m = re.search(r'^\.SH "?NAME"?\n(.*?)^\.SH', text, re.M | re.S)
        name = ' '.join(l for l in m.group(1).splitlines()
                        if not l.startswith('.')) if m else ''
        if not re.search(r'(^|[ ,])' + re.escape(n) + r'\b',
                         name.replace('\\', '')):
            bad.append(f'{n}.3: NAME does not name {n}')
    if not os.path.exists(os.path.join(man_dir, 'cprxfer.7')):
        bad.append('no man page cprxfer.7')
    mandoc = shutil.which('mandoc')
    if not mandoc:
        print('mandoc not installed: man pages not linted')
    elif pages:
        r = subprocess.run([mandoc, '-T', 'lint', '-W', 'style'] + pages,
                           capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip()
        if out:
            bad.append('mandoc -T lint:\n' + out)
    # What lintian runs: groff's own warnings (lines it cannot fit); all
    # pages in one run, then one by one to name the culprit.
    man = shutil.which('man')

    def groff(files):
        return subprocess.run([man, '--warnings', '-E', 'UTF-8', '-l',
                               '-Tutf8', '-Z'] + files, capture_output=True,
                              text=True,
                              env=dict(os.environ, MANWIDTH='80')).stderr
    if man and pages and groff(pages).strip():
        for p in pages:
            err = groff([p]).strip()
            if err:
                bad.append(f'man --warnings {os.path.basename(p)}:\n' + err)
    return bad, len(pages)


def strip_c(text):
    """Drop comments, string and character literals."""
    pat = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'
                     r"'(?:\\.|[^'\\\n])*'", re.S)
    return pat.sub(' ', text)


def statements(text):
    """Split a meson.build into statements (parentheses balanced)."""
    out, cur, depth = [], [], 0
    for line in text.splitlines():
        code = re.sub(r"#.*", '', line) if "'" not in line.split('#')[0] \
            or line.count("'") % 2 == 0 else line
        cur.append(code)
        depth += code.count('(') + code.count('[') - code.count(')') \
            - code.count(']')
        if depth <= 0:
            out.append('\n'.join(cur))
            cur, depth = [], 0
    if cur:
        out.append('\n'.join(cur))
    return out


def tested_example_sources():
    """C files of examples/ compiled into a binary some test runs."""
    builds = glob.glob(os.path.join(root, 'examples', '**', 'meson.build'),
                       recursive=True)
    builds += glob.glob(os.path.join(root, 'tests', '**', 'meson.build'),
                        recursive=True)
    test_text = ''
    for p in glob.glob(os.path.join(root, 'tests', '**', '*.c'),
                       recursive=True):
        test_text += read(p)
    exes = {}           # variable -> (binary name, set of C paths)
    tested_vars = set()
    for b in builds:
        d = os.path.dirname(b)
        var_files = {}
        foreach = []
        test_text += read(b)
        for st in statements(read(b)):
            s = st.strip()
            fm = re.match(r'foreach\s+\w+\s*:\s*\[(.*)\]', s, re.S)
            if fm:
                foreach.append(re.findall(r"'([^']+\.c)'", fm.group(1)))
                continue
            if s.startswith('endforeach'):
                foreach = foreach[:-1]
                continue
            files = set(os.path.join(d, f)
                        for f in re.findall(r"'([^']+\.c)'", s))
            for ident in re.findall(r'\b([A-Za-z_]\w*)\b', s):
                files |= var_files.get(ident, set())
            if foreach and re.search(r'files\(\s*[A-Za-z_]', s):
                files |= set(os.path.join(d, f) for f in foreach[-1])
            am = re.match(r'([A-Za-z_]\w*)\s*(\+?=)\s*(.*)', s, re.S)
            if am:
                var, op, rhs = am.groups()
                if op == '+=':
                    var_files[var] = var_files.get(var, set()) | files
                else:
                    var_files[var] = files
                em = re.match(r"executable\(\s*'([^']+)'", rhs)
                if em:
                    exes[var] = (em.group(1), files)
            if s.startswith('test('):
                tested_vars |= set(re.findall(r'\b([A-Za-z_]\w*)\b', s))
    srcs = set()
    for var, (name, files) in exes.items():
        # Run by a test() entry, or by a test program that names it.
        named = re.search(r'"[^"\n]*\b' + re.escape(name) + r'"', test_text)
        if var in tested_vars or named:
            srcs |= files
    return sorted(f for f in srcs if os.path.exists(f))


def main():
    names = exported()
    if not names:
        print('no exported functions found in lib/libcprxfer.sym')
        return 1
    missing_page, missing_sec = [], []
    for n in names:
        page = os.path.join(root, 'docs', 'ref', n + '.md')
        if not os.path.exists(page):
            missing_page.append(n)
            continue
        heads = set(h.strip().upper() for h in
                    re.findall(r'^#{1,6}\s+(.*?)\s*#*\s*$', read(page), re.M))
        lack = [s for s in SECTIONS if s not in heads]
        if lack:
            missing_sec.append(f'{n} ({", ".join(lack)})')

    sources = sorted(glob.glob(os.path.join(root, 'tests', '**', '*.c'),
                               recursive=True))
    sources += tested_example_sources()
    used = set()
    for p in sources:
        used |= set(re.findall(r'\b(cprxfer_\w+)\b', strip_c(read(p))))
    untested = [n for n in names if n not in used]

    bad = False
    if man_dir:
        man_bad, npages = check_man(names)
        for b in man_bad:
            print(b)
        bad = bool(man_bad)
        print(f'{npages} man pages in {man_dir} checked')
    if missing_page:
        print(f'no page in docs/ref/ ({len(missing_page)}): '
              + ' '.join(missing_page))
        bad = True
    if missing_sec:
        print('pages missing sections: ' + '; '.join(missing_sec))
        bad = True
    if untested:
        print(f'not used by any test ({len(untested)}): ' + ' '.join(untested))
        bad = True
    rel = [os.path.relpath(p, root) for p in sources]
    print(f'{len(names)} exported functions checked against docs/ref/ and '
          f'{len(rel)} test sources')
    return 1 if bad else 0


sys.exit(main())
