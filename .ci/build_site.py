#!/usr/bin/env python3
"""Build the HTML documentation site in site/ from docs/ (the lessons as Markdown, written by .ci/make_docs.py).

MkDocs Material renders the pages with navigation in lesson order, in-page search and code highlighting; KaTeX
renders the maths in the browser. KaTeX comes from the npm registry once (`npm pack`, cached in .cache/) and is
served from the site itself, so the built site needs no network. The pages are staged in _site_src/ with KaTeX
beside them; docs/ stays exactly what make_docs.py writes.

    python .ci/build_site.py        # or `make docs`, which first regenerates docs/
"""
import os, re, shutil, subprocess, sys, tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KATEX = '0.16.47'
KATEX_INIT = """document.addEventListener('DOMContentLoaded', () => renderMathInElement(document.body, {
  delimiters: [{left: '\\\\[', right: '\\\\]', display: true}, {left: '\\\\(', right: '\\\\)', display: false}],
  throwOnError: false}));
"""


def katex(cache: Path) -> Path:
    "KaTeX's dist/ folder (scripts, styles, fonts), unpacked from its npm package into `cache` on first use."
    dist = cache / f'katex-{KATEX}'
    if not (dist / 'katex.min.js').is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(['npm', 'pack', f'katex@{KATEX}', '--pack-destination', str(cache)], check=True,
                       capture_output=True)
        with tarfile.open(cache / f'katex-{KATEX}.tgz') as tar:
            members = [m for m in tar.getmembers() if m.name.startswith('package/dist/')]
            for m in members: m.name = m.name[len('package/dist/'):]
            tar.extractall(dist, members=members, filter='data')
    return dist


def display_maths_as_blocks(text: str) -> str:
    """Put each `$$...$$` formula that starts a line in a block of its own: the lessons write display maths inside
    paragraphs (as Jupyter renders it), where Markdown would read it as inline maths between two stray dollars."""
    parts = re.split(r'(^```.*?^```)', text, flags=re.M | re.S)               # leave code blocks alone
    return ''.join(part if part.startswith('```') else
                   re.sub(r'^\$\$(.+?)\$\$', lambda m: f'\n$$\n{m[1].strip()}\n$$\n', part, flags=re.M | re.S)
                   for part in parts)


def prepare(page: Path) -> None:
    """Give a lesson page its navigation title, "00 · Losses", as front matter (MkDocs would otherwise take the file
    name), drop the "generated" comment above its heading, and set its display maths apart."""
    text = display_maths_as_blocks(re.sub(r'^<!--.*?-->\s*', '', page.read_text(), count=1))
    heading = re.search(r'^# (.+)$', text, re.M)
    number = page.stem.split('_')[0]
    title = heading[1] if page.stem == 'index' or heading is None else f"{number} · {heading[1]}"
    page.write_text(f'---\ntitle: "{title}"\n---\n\n' + text)


def stage(src: Path) -> None:
    "docs/ plus KaTeX and its start-up script in `src`, the folder mkdocs.yml builds from."
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / 'docs', src)
    for page in src.glob('*.md'): prepare(page)
    shutil.copytree(katex(ROOT / '.cache'), src / 'assets' / 'katex', ignore=shutil.ignore_patterns('*.md'))
    (src / 'assets' / 'katex-init.js').write_text(KATEX_INIT)


def main() -> int:
    stage(ROOT / '_site_src')
    result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--clean', '-f', str(ROOT / 'mkdocs.yml')],
                            cwd=ROOT, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    if result.returncode == 0: print(f'site built: {ROOT / "site" / "index.html"}')
    return result.returncode


if __name__ == '__main__':
    sys.exit(main())
