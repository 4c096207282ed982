#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Turn reference pages (Markdown) into man pages, with lowdown.

  md2man.py LOWDOWN VERSION OUTDIR IN.md...

writes OUTDIR/<name>.<section> for each page (one process for all: the
build runs it once).

The Markdown pages in docs/ref/ and docs/man/ are the one source of
truth; the man pages are generated from them at build time. A page
starts with "# name(section)"; its "## NAME" line reads
"name, name2 — what it does". This script:
  - takes name and section from the first line and writes the .TH line
    itself (lowdown's body output is used, not its standalone mode);
  - lifts every heading one level (## NAME becomes .SH NAME);
  - turns links to other pages, [cprxfer_load(3)](cprxfer_load.md),
    and code spans naming a page, `cprxfer_load(3)`, into the man
    convention, bold name and section: \\fBcprxfer_load\\fR(3);
  - keeps other links as their text (a man page has no hyperlinks to
    Markdown files), with the web address for http links;
  - writes the NAME line as "name \\- description", as whatis expects.
The date comes from SOURCE_DATE_EPOCH (reproducible builds) or, if
unset, from the source file's modification time.
"""
import datetime
import os
import re
import subprocess
import sys

PAGE = re.compile(r'`?(\w[\w.-]*)\(([1-8])\)`?')


def preprocess(lines):
    out = []
    fence = False
    for line in lines:
        if line.startswith('```'):
            fence = not fence
            out.append(line)
            continue
        if fence:
            out.append(line)
            continue
        if re.match(r'^#{2,6} ', line):
            line = line[1:]
        # [name(3)](page.md) and [name(3)](#anchor): a page reference
        line = re.sub(r'\[`?(\w[\w.-]*)\(([1-8])\)`?\]\([^)]*\)',
                      r'`\1`(\2)', line)
        # the guides: their man page is cprxfer(7)
        line = re.sub(r'\[[^\]]*\]\((\.\./)?(modes|protocol|format|'
                      r'security)\.md[^)]*\)', '`cprxfer`(7)', line)
        # other guides: where to find them
        line = re.sub(r'\[([^\]]+)\]\((?:\.\./)?(\w[\w-]*\.md)[^)]*\)',
                      lambda m: m.group(1) if m.group(1).endswith('.md')
                      and m.group(1) != m.group(2) else
                      f'{m.group(1)} (docs/{m.group(2)} in the sources)'
                      if not m.group(1).endswith('.md') else
                      f'docs/{m.group(2)} in the sources', line)
        # other links to Markdown files or anchors: their text
        line = re.sub(r'\[([^\]]+)\]\((?!https?:)[^)]*\)', r'\1', line)
        # web links: text and address
        line = re.sub(r'\[([^\]]+)\]\((https?:[^)]*)\)', r'\1 <\2>', line)
        # a code span that names a page: `cprxfer_load(3)`
        line = re.sub(r'`(\w[\w.-]*)\(([1-8])\)`', r'`\1`(\2)', line)
        out.append(line)
    return out


def convert(lowdown, src, outdir, version):
    with open(src, encoding='utf-8') as f:
        lines = f.read().splitlines()
    m = re.match(r'^# (\S+)\(([1-8])\)\s*$', lines[0]) if lines else None
    if not m:
        sys.exit(f'{src}: first line must be "# name(section)"')
    name, section = m.groups()
    body = preprocess(lines[1:])
    # cprxfer_get_u64 is a name, not emphasis; no metadata block; --x
    # stays two hyphens, not a dash
    r = subprocess.run([lowdown, '-Tman', '--parse-no-intraemph',
                        '--parse-no-metadata', '--parse-no-super',
                        '--out-no-smarty'],
                       input='\n'.join(body) + '\n', capture_output=True,
                       text=True, check=True)
    roff = r.stdout
    # ".SH\nNAME" -> ".SH NAME", the usual shape (whatis, lintian)
    roff = re.sub(r'^\.(SH|SS)\n([^.\n][^\n]*)$',
                  lambda m: f'.{m.group(1)} {quote(m.group(2))}', roff,
                  flags=re.M)
    roff = fonts(roff, params(body))
    roff = re.sub(r'(\\fBcprxfer\\fR\(7\))(,\s*\\fBcprxfer\\fR\(7\))+',
                  r'\1', roff)
    roff = re.sub(r'^\.TS\n(.*?)^\.TE\n', lists, roff, flags=re.M | re.S)
    roff = fix_name(roff, src)
    roff = tidy(roff)
    epoch = os.environ.get('SOURCE_DATE_EPOCH')
    t = int(epoch) if epoch else int(os.stat(src).st_mtime)
    date = datetime.datetime.fromtimestamp(
        t, datetime.timezone.utc).strftime('%Y-%m-%d')
    title = name.upper()
    head = ("'\\\" t\n"
            f'.\\" Generated from {os.path.basename(src)} by md2man.py; '
            'edit the Markdown, not this file.\n'
            f'.TH "{title}" "{section}" "{date}" "libcprxfer {version}" '
            f'"{manual(section)}"\n')
    with open(os.path.join(outdir, f'{name}.{section}'), 'w',
              encoding='utf-8') as f:
        f.write(head + roff)


def main():
    lowdown, version, outdir = sys.argv[1:4]
    for src in sys.argv[4:]:
        convert(lowdown, src, outdir, version)


def tidy(roff):
    """What mandoc -T lint asks: no paragraph macro right after a
    heading, text lines of at most 80 bytes (outside examples)."""
    out, ex = [], False
    named = {'\u2014': r'\(em', '\u2013': r'\(en', '\u201c': r'\(lq',
             '\u201d': r'\(rq', '\u2018': r'\(oq', '\u2019': r'\(cq',
             '\u00d7': r'\(mu', '\u2192': r'\(->', '\u2264': r'\(<=',
             '\u2265': r'\(>=', '\u00a0': r'\ ', '\u2026': r'.\|.\|.'}
    roff = ''.join(c if ord(c) < 128 else
                   named.get(c, '\\[u%04X]' % ord(c)) for c in roff)
    for line in roff.splitlines():
        if line in ('.LP', '.PP') and out and \
                re.match(r'^\.(SH|SS)\b', out[-1]):
            continue
        if line == '.EX':
            ex = True
        elif line == '.EE':
            ex = False
        if ex or line.startswith('.') or len(line.encode()) <= 80:
            out.append(line)
            continue
        cur = ''
        for word in line.split(' '):
            if cur and len((cur + ' ' + word).encode()) > 80:
                out.append(cur)
                cur = word
            else:
                cur = cur + ' ' + word if cur else word
        out.append(cur)
    # a paragraph macro with nothing after it before the next break
    keep = [line for i, line in enumerate(out)
            if not (line in ('.PP', '.LP') and
                    (i + 1 == len(out) or
                     re.match(r'^\.(SH|SS|PP|LP|TP)\b', out[i + 1])))]
    return '\n'.join(keep) + '\n'


def lists(m):
    """Tables read better in a terminal as tagged lists (tbl cannot fit
    long identifiers in narrow columns): a row becomes .TP with its first
    cell as the tag; in a wider table each other cell follows on its own
    line, after its column's heading."""
    block = m.group(1)
    fmt = re.search(r'^(.*)\.$', block, re.M)
    ncols = len(fmt.group(1).split()) if fmt else 0
    cells = re.findall(r'T\{\n(.*?)\nT\}', block, re.S)
    if ncols < 2 or len(cells) % ncols:
        return m.group(0)
    heads = cells[:ncols]
    out = []
    for i in range(ncols, len(cells), ncols):
        row = cells[i:i + ncols]
        out += ['.TP', row[0]]
        if ncols == 2:
            out.append(row[1])
            continue
        for j in range(1, ncols):
            if j > 1:
                out.append('.br')
            out.append(f'\\fI{heads[j]}\\fR: {row[j]}')
    return '\n'.join(out) + '\n.PP\n'


def quote(text):
    return f'"{text}"' if ' ' in text else text


def params(body):
    """Parameter names of the prototypes in the SYNOPSIS code block."""
    text = '\n'.join(body)
    m = re.search(r'^# SYNOPSIS\n+```c?\n(.*?)^```', text, re.M | re.S)
    names = set()
    if m:
        for proto in re.findall(r'\w+\s*\(([^()]*)\)\s*;', m.group(1)):
            for arg in proto.split(','):
                a = re.search(r'(\w+)\s*(\[\s*\])?\s*$', arg.strip())
                if a and a.group(1) not in ('void',):
                    names.add(a.group(1))
    return names


def fonts(roff, names):
    """Code spans: parameters in italics, everything else in bold."""
    def one(m):
        inner = m.group(1)
        plain = inner.replace('\\(cq', "'")
        return (r'\fI' if plain in names else r'\fB') + inner + r'\fR'
    return re.sub(r'\\fC(.*?)\\fR', one, roff, flags=re.S)


def manual(section):
    return {'1': 'User Commands', '3': 'Library Functions Manual',
            '7': 'Miscellaneous Information Manual'}.get(section,
                                                         'libcprxfer')


def fix_name(roff, src):
    lines = roff.splitlines()
    for i, l in enumerate(lines):
        if re.match(r'^\.SH "?NAME"?$', l):
            j = i + 1
            while j < len(lines) and lines[j].startswith('.') and \
                    not lines[j].startswith('.SH'):
                j += 1
            if j >= len(lines) or lines[j].startswith('.SH'):
                sys.exit(f'{src}: empty NAME section')
            text = lines[j]
            text = re.sub(r'\s*(\\\(em|\\\[em\]|—|\\-\\-)\s*', r' \\- ',
                          text, count=1)
            lines[j] = text
            break
    else:
        sys.exit(f'{src}: no NAME section')
    return '\n'.join(lines) + '\n'


main()
