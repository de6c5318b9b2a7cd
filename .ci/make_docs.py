#!/usr/bin/env python3
"""Build README.md (from nbs/index.ipynb) and docs/ (every notebook as Markdown) without quarto.

nbdev 2 renders docs with quarto, which cannot be installed on our machines. This script runs nbdev's own
notebook processors (those of `nbdev.serve.proc_nbs`: show_doc for exported names, hidden cells removed, names
linked), three of them corrected (`DocsProcs`), then nbconvert's Markdown exporter, so the docs read like
nbdev's. Plots are written next to the Markdown; progress bars and interactive widgets are left out.

    python .ci/make_docs.py             # write README.md and docs/
    python .ci/make_docs.py --out DIR   # write DIR/README.md and DIR/docs/ instead (to look at a change)
    python .ci/make_docs.py --check     # exit 1 if README.md or docs/ differ from what the notebooks give
"""
import argparse, ast, filecmp, re, shutil, sys, tempfile
from itertools import groupby
from pathlib import Path

import yaml
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import TagRemovePreprocessor
import nbformat
import nbdev.serve_drv
from nbdev.config import get_config
from nbdev.doclinks import NbdevLookup, nbglob
from nbdev.process import Processor
from nbdev.processors import FilterDefaults, add_links, add_show_docs, mv_exports

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r'^\s*#\|.*$\n?', re.M)
# quarto link attributes: literal text on GitHub
SOURCE_LINK_ATTRS = '{target="_blank" style="float:right; font-size:smaller"}'
# tqdm's bar, `train:  50%|#####     | 4/8 [00:01<00:01, ...]`, or `4it [00:01, ...]` when it has no total
TQDM_BAR = re.compile(r'\d+%\|.*\|\s*\S+/\S+ \[|\d+it \[')


class ShowDocsInOrder(add_show_docs):
    """nbdev's `add_show_docs` (a `show_doc` cell after each exported cell, per public name it defines), with
    the entries in the order of definition. nbdev inserts every name's cell at the same index, just after the
    defining cell, so a cell defining `a, b, c` documents them `c, b, a`: 07a's one cell of question families
    listed `ask_relation`, its last function, first. Each run of inserted cells is put back in order."""
    def begin(self) -> None:
        super().begin()
        runs = groupby(self.nb.cells, key=lambda cell: cell.get('has_sd', False))
        self.nb.cells = [cell for inserted, run in runs for cell in (list(run)[::-1] if inserted else run)]


class SourceAfterDocs(Processor):
    """nbdev's `mv_exports` for every name of a cell: an `#| exports` cell (code shown in the docs) goes after
    the `show_doc` entries of all the names it defines. nbdev moves it past the first entry only, which left
    the code of a cell defining several names between its first entry and the others."""
    def begin(self) -> None:
        cells = self.nb.cells
        for i in reversed(range(len(cells))):
            if cells[i].cell_type != 'code' or 'exports' not in cells[i].get('directives_', {}): continue
            end = i + 1
            while end < len(cells) and cells[end].get('has_sd', False): end += 1
            cells[i:end] = [*cells[i + 1:end], cells[i]]


def listed_words(module: Path) -> set[str]:
    """The plain words (lower-case letters only) that a module's code lists as values: keys of dict literals,
    items of tuple, list and set literals. These are a lesson's option names, splits and result keys."""
    words = set()
    for node in ast.walk(ast.parse(module.read_text())):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, 'elts', [])
        words |= {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
    return {w for w in words if re.fullmatch(r'[a-z]+', w)}


class LessonLookup(NbdevLookup):
    """Where a backticked name in one lesson links. nbdev links every backticked word that is a name in
    `_modidx.py` to the first module defining it, whatever the word means where it stands: 07's table of
    connectors linked the connector `mlp` to the transformer helper `model.mlp`, 07a's list of splits linked
    the split `train` to the function `train.train`. Here, in the lesson whose module is `module`:

    1. a name the lesson's own module defines links to the lesson's definition (08a's `summary_table` is its
       own, not 06's);
    2. otherwise a plain word (lower-case letters only) that the lesson's module lists as a value
       (`listed_words`: `CONNECTORS`' `'mlp'`, `SPLITS`' `'train'`, a result's `'chance'`) means that value
       and stays code. A snake_case value links: it is the name of the function it picks (02b benchmarks
       `'sigmoid_loss'`, which is `sigmoid_loss`), and so does a qualified name: 07a would write
       `minisiglip.train.train` for the function;
    3. any other name links as nbdev links it."""
    def __init__(self, module: str | None):
        super().__init__()
        cfg = get_config()
        qual = f'{cfg.lib_name}.{module}'
        syms = self.entries.get(cfg.lib_name, {}).get('syms', {}).get(qual, {}) if module else {}
        self.own = {name[len(qual) + 1:]: urls[0] for name, urls in syms.items()}
        self.values = listed_words(cfg.lib_path / f"{module.replace('.', '/')}.py") if module else set()

    def doc(self, sym: str) -> str | None:
        "The docs URL `sym` links to in this lesson, or None for no link."
        if sym in self.own: return self.own[sym]
        if sym in self.values: return None
        return super().doc(sym)


class LessonLinks(Processor):
    "nbdev's `add_links` (names in Markdown cells and in show_doc output become links), by `LessonLookup`."
    def __init__(self, nb):
        super().__init__(nb)
        exp = [c.directives_['default_exp'][0] for c in nb.cells if 'default_exp' in c.get('directives_', {})]
        self.lookup = LessonLookup(exp[0] if exp else None)

    def __call__(self, cell) -> None:
        if cell.cell_type == 'markdown': cell.source = self.lookup.linkify(cell.source)
        for o in cell.get('outputs', []):
            if 'text/markdown' in o.get('data', {}):
                o.data['text/markdown'] = [self.lookup.link_line(s) for s in o.data['text/markdown']]


class DocsProcs(FilterDefaults):
    "nbdev's docs processors, `ShowDocsInOrder`, `SourceAfterDocs` and `LessonLinks` in place of nbdev's own."
    def base_procs(self) -> list:
        swap = {add_show_docs: ShowDocsInOrder, mv_exports: SourceAfterDocs, add_links: LessonLinks}
        return [swap.get(p, p) for p in super().base_procs()]


def process_notebooks(nbs: Path, dest: Path) -> None:
    """Every notebook of `nbs` (not the `_` scratch ones) processed for docs into `dest`, as
    `nbdev.serve.proc_nbs` does it, but with `DocsProcs`: proc_nbs always uses `FilterDefaults`."""
    for src in nbglob(nbs, as_path=True):
        dst = dest / src.relative_to(nbs)
        dst.parent.mkdir(parents=True, exist_ok=True)
        nbdev.serve_drv.main((src, dst, DocsProcs))


def local_links(body: str, doc_url: str, pages: dict[str, str], prefix: str) -> str:
    """Point nbdev's links to names (`{doc_url}/{module}.html#{name}`, pages quarto would publish) at our
    Markdown pages: `{prefix}{notebook}.md#{anchor}`, the anchor as GitHub derives it from the `### name`
    heading (dots dropped)."""
    def repl(m: re.Match) -> str:
        page, anchor = m[1], m[2] or ''
        if page not in pages: return m[0]
        return f"{prefix}{pages[page]}.md" + (f"#{anchor.replace('.', '')}" if anchor else '')
    body = re.sub(re.escape(doc_url) + r'/([\w-]+)\.html(?:#([\w.-]+))?', repl, body)
    return body.replace(SOURCE_LINK_ATTRS, '')


def site_links(body: str, git_url: str, branch: str) -> str:
    """The README's links as the docs site's home page needs them: `docs/X` becomes `X`, and a link to any
    other file of the repo (`nbs/...json`, `CONTRIBUTING.md`) points at it on the repository, which the site
    does not hold."""
    def repl(m: re.Match) -> str:
        target = m[2]
        if re.match(r'^(https?:|#|mailto:)', target): return m[0]
        if target.startswith('docs/'): return f"{m[1]}({target[len('docs/'):]})"
        return f"{m[1]}({git_url}/blob/{branch}/{target})"
    return re.sub(r'(\])\(([^)\s]+)\)', repl, body)


def heading_anchors(markdown: str) -> set[str]:
    "The anchors of a page's headings, as GitHub and MkDocs derive them (lower case, punctuation dropped)."
    return {re.sub(r'[-\s]+', '-', re.sub(r'[^\w\s-]', '', h).strip().lower())
            for h in re.findall(r'^#{1,6}\s+(.+?)\s*$', markdown, re.M)}


def drop_dead_anchors(docs: Path) -> None:
    """Links to `page.md#anchor` where the page has no such heading (nbdev links methods and private helpers,
    which get no heading of their own) point at the page instead: a link that lands somewhere, never a broken
    anchor."""
    pages = {p.name: p.read_text() for p in docs.glob('*.md')}
    anchors = {name: heading_anchors(text) for name, text in pages.items()}
    for name, text in pages.items():
        fixed = re.sub(r'\]\(([\w-]+\.md)#([\w-]+)\)',
                       lambda m: m[0] if m[2] in anchors.get(m[1], ()) else f"]({m[1]})", text)
        if fixed != text: (docs / name).write_text(fixed)


def front_matter(nb) -> dict:
    "nbdev moves the title cell into a YAML raw cell; read title and description back from it."
    for cell in nb.cells:
        if cell.cell_type == 'raw' and cell.source.startswith('---'):
            return yaml.safe_load(cell.source.strip().strip('-')) or {}
    return {}


def without_progress_bars(text: str) -> str:
    """A stream's text as a terminal leaves it, without progress bars. tqdm redraws its bar in place, each
    state written after a carriage return: a line holding one is kept as its last state (what follows its last
    `\\r`), and dropped when that is a tqdm bar or blank. Lines printed plainly stay as they are."""
    kept = []
    for line in text.replace('\r\n', '\n').split('\n'):
        if '\r' in line:
            line = line.rsplit('\r', 1)[1]
            if not line.strip() or TQDM_BAR.search(line): continue
        kept.append(line)
    return '\n'.join(kept)


def drop_progress_bars(cell) -> None:
    """Progress bars out of a code cell's stream outputs, and streams left empty out of its outputs: a bar's
    states are noise on a page (the notebooks keep their outputs)."""
    for o in cell.get('outputs', []):
        if o.output_type == 'stream': o.text = without_progress_bars(o.text)
    cell.outputs = [o for o in cell.get('outputs', []) if o.output_type != 'stream' or o.text.strip()]


WIDGET = 'application/vnd.jupyter.widget-view+json'


def drop_widgets(cell) -> None:
    """Interactive widgets out of a code cell's outputs. A widget lives in a running kernel; on a page nbconvert
    would print its text form (`interactive(children=(FloatSlider(...` ...)). A lesson draws the widget's figure once
    with plain arguments before wrapping it (00's `plot_pair_losses`), so the page shows that static figure."""
    cell.outputs = [o for o in cell.get('outputs', []) if WIDGET not in o.get('data', {})]


def to_markdown(nb_path: Path, files_dir: str, img_prefix: str) -> tuple[str, dict, dict]:
    "Markdown text, extracted images and front matter of one processed notebook."
    nb = nbformat.read(nb_path, as_version=4)
    meta = front_matter(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'raw': continue
        if cell.cell_type == 'code':
            if re.search(r'^#\|\s*echo:\s*false', cell.source, re.M):
                cell.metadata.setdefault('tags', []).append('remove_input')
            cell.source = DIRECTIVE.sub('', cell.source).strip('\n')
            cell.execution_count = None
            drop_progress_bars(cell)
            drop_widgets(cell)
        cells.append(cell)
    nb.cells = cells
    nb.metadata['language_info'] = {'name': 'python'}  # nbdev_clean strips it; code fences need the language
    exporter = MarkdownExporter()
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove_input'}, enabled=True),
                                   enabled=True)
    body, resources = exporter.from_notebook_node(nb, resources={'output_files_dir': files_dir})
    body = body.replace(f'({files_dir}/', f'({img_prefix}{files_dir}/')
    head = (f"# {meta.get('title', nb_path.stem)}\n\n"
            + (f"> {meta['description']}\n\n" if meta.get('description') else ''))
    body = body.replace('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->', '')
    body = re.sub(r'\n{3,}', '\n\n', head + body).strip() + '\n'
    return body, resources.get('outputs', {}), meta


def build(out: Path) -> None:
    "Write README.md and docs/ under `out`."
    cfg = get_config()
    docs = out / 'docs'
    docs.mkdir(parents=True, exist_ok=True)
    doc_url = cfg.doc_host.rstrip('/') + cfg.doc_baseurl.rstrip('/')
    with tempfile.TemporaryDirectory() as tmp:
        proc = Path(tmp)
        process_notebooks(cfg.nbs_path, proc)
        lessons = [p.stem for p in proc.glob('*.ipynb') if p.stem != 'index']
        pages = {re.sub(r'^\d+[a-z]?_', '', stem): stem for stem in lessons}     # losses.html -> 00_losses
        for nb_path in sorted(proc.glob('*.ipynb')):
            if nb_path.stem == 'index':                 # the README, and the same text as the docs' home page
                body, images, _ = to_markdown(nb_path, 'index_files', 'docs/')
                body = local_links(body, doc_url, pages, 'docs/')
                stamp = '<!-- generated from nbs/index.ipynb by .ci/make_docs.py: do not edit -->\n\n'
                (out / 'README.md').write_text(stamp + body)
                (docs / 'index.md').write_text(stamp + site_links(body, cfg.git_url, cfg.branch))
            else:
                body, images, _ = to_markdown(nb_path, f'{nb_path.stem}_files', '')
                body = local_links(body, doc_url, pages, '')
                stamp = f'<!-- generated from nbs/{nb_path.name} by .ci/make_docs.py: do not edit -->\n\n'
                (docs / f'{nb_path.stem}.md').write_text(stamp + body)
            for name, data in images.items():
                (docs / name).parent.mkdir(parents=True, exist_ok=True)
                (docs / name).write_bytes(data)
    drop_dead_anchors(docs)


def differences(a: Path, b: Path) -> list[str]:
    "Files that differ between two trees (recursively), as paths relative to them."
    cmp = filecmp.dircmp(a, b)
    out = [*cmp.left_only, *cmp.right_only, *cmp.diff_files, *cmp.funny_files]
    for sub in cmp.common_dirs: out += [f'{sub}/{p}' for p in differences(a / sub, b / sub)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='fail if README.md or docs/ are stale')
    parser.add_argument('--out', type=Path, help='write README.md and docs/ under this folder, not the repo')
    args = parser.parse_args()
    if args.out is not None:
        shutil.rmtree(args.out / 'docs', ignore_errors=True)
        build(args.out)
        return 0
    if not args.check:
        shutil.rmtree(ROOT / 'docs', ignore_errors=True)
        build(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(tmp)
        stale = differences(ROOT / 'docs', tmp / 'docs')
        if (ROOT / 'README.md').read_text() != (tmp / 'README.md').read_text(): stale.append('README.md')
    if stale:
        print('README.md / docs/ are stale; run `python .ci/make_docs.py` and commit. Differs:', *stale,
              sep='\n  ')
        return 1
    print('README.md and docs/ match the notebooks.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
