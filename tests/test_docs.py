"""The Markdown docs as `.ci/make_docs.py` renders them from the notebooks, built into a temporary folder (so
these checks hold whether or not docs/ was regenerated; CI's `make_docs.py --check` ties docs/ to the same
build): API entries in the order the lesson defines them, names linked to what they mean, no progress bars, and
widgets shown as their static figures."""
import ast, importlib.util, os, re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('make_docs', ROOT / '.ci' / 'make_docs.py')
make_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_docs)


@pytest.fixture(scope='module')
def pages(tmp_path_factory) -> dict[str, str]:
    "Every rendered lesson page by notebook name (`07a_vqa`), built from the notebooks as they are now."
    out, cwd = tmp_path_factory.mktemp('docs'), Path.cwd()
    os.chdir(ROOT)                                   # nbdev finds settings.ini from the working directory
    try: make_docs.build(out)
    finally: os.chdir(cwd)
    return {p.stem: p.read_text() for p in (out / 'docs').glob('*.md')}


def definitions(nb_path: Path) -> list[str]:
    "The public functions and classes a notebook's exported cells define, in notebook order: show_doc's list."
    names = []
    for cell in nbformat.read(nb_path, as_version=4).cells:
        if cell.cell_type != 'code' or not re.match(r'#\|\s*exports?\s*$', cell.source, re.M): continue
        defs = [n for n in ast.parse(cell.source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        names += [n.name for n in defs if not n.name.startswith('_')]
    return names


def test_api_entries_follow_definition_order(pages):
    "nbdev listed the names of a cell backwards (07a began with `ask_relation`, its question cell's last)."
    wrong = {}
    for stem, text in pages.items():
        defined = definitions(ROOT / 'nbs' / f'{stem}.ipynb')
        entries = [h for h in re.findall(r'^### (\S+)$', text, re.M) if h in defined]
        if entries != sorted(entries, key=defined.index): wrong[stem] = entries
    assert not wrong, f'API entries out of definition order: {wrong}'
    vqa = re.findall(r'^### (ask_\w+)$', pages['07a_vqa'], re.M)
    assert vqa == [n for n in definitions(ROOT / 'nbs' / '07a_vqa.ipynb') if n.startswith('ask_')]


def test_lesson_lookup_links_a_name_to_what_it_means(monkeypatch):
    monkeypatch.chdir(ROOT)
    lookup = make_docs.LessonLookup
    assert lookup('vlm').doc('mlp') is None                          # 07's connector `'mlp'`, not `model.mlp`
    assert lookup('model').doc('mlp').endswith('/model.html#mlp')    # 04's own helper
    assert lookup('vlm').doc('pixel_shuffle').endswith('/vlm.html#pixel_shuffle')  # 07 defines it too
    assert lookup('vqa').doc('train') is None                        # 07a's split `'train'`
    assert lookup('vqa').doc('minisiglip.train.train').endswith('/train.html#train')
    assert lookup('vlm_train').doc('train').endswith('/train.html#train')  # 07b only passes 'train' on
    assert lookup('bench').doc('sigmoid_loss').endswith('/losses.html#sigmoid_loss')  # names its function
    assert lookup('vlm_lessons').doc('summary_table').endswith('/vlm_lessons.html#summary_table')  # not 06's
    assert lookup(None).doc('train').endswith('/train.html#train')   # the home page speaks of the package


def test_no_page_links_a_lesson_value_to_another_lesson(pages):
    "The connector `mlp` linked to the transformer helper `04_model.md#mlp`, the split `train` to 05_train."
    assert re.search(r'^\| `mlp` \|', pages['07_vlm'], re.M), "07's connector table: `mlp` names a connector"
    assert re.search(r'^- `train`:', pages['07a_vqa'], re.M), "07a's splits: `train` is a split's name"
    checked = 0
    for stem, text in pages.items():
        cells = nbformat.read(ROOT / 'nbs' / f'{stem}.ipynb', as_version=4).cells
        module = next((m[1] for c in cells if (m := re.match(r'#\|\s*default_exp\s+(\S+)', c.source))), None)
        if module is None: continue
        values = make_docs.listed_words(ROOT / 'minisiglip' / f"{module.replace('.', '/')}.py")
        for word, page in re.findall(r'\[`([a-z]+)`\]\(([\w-]+)\.md', text):
            assert word not in values or page == stem, f'{stem} links its value `{word}` to {page}'
        checked += bool(values)
    assert checked > 10                                   # the lessons' modules were found and list values


def test_without_progress_bars_keeps_printed_lines():
    shown = make_docs.without_progress_bars
    bar = '\rtrain:   0%|          | 0/8 [00:00<?, ?it/s]\rtrain: 100%|##########| 8/8 [00:00<00:00]\n'
    assert shown(bar) == ''
    assert shown('data: 64 pairs\n' + bar + 'done\n') == 'data: 64 pairs\ndone\n'   # printed lines stay
    assert shown('\rload: 3it [00:01, 2.9it/s]\r    \rloaded 3 files\n') == 'loaded 3 files\n'  # bar cleared
    assert shown('a line\r\nanother\n') == 'a line\nanother\n'


def test_no_page_holds_a_progress_bar(pages):
    bars = {stem: len(re.findall(r'\d+%\|', text)) for stem, text in pages.items()}
    assert not any(bars.values()), f'tqdm bars on pages: {bars}'


def test_a_widget_renders_as_its_static_figure(pages):
    "00's sliders over the pair losses: the page shows the figure drawn before the widget, never the widget's repr."
    assert not any('interactive(children' in text for text in pages.values())
    section = pages['00_losses'].split('plot_pair_losses()', 2)[-1].split('\n## ', 1)[0]
    assert re.search(r'!\[png\]\(00_losses_files/output_\d+_\d+\.png\)', section), section[:500]


def test_drop_widgets_keeps_the_figure_drawn_before_the_widget():
    "A notebook saved from Jupyter holds the widget's view; the page keeps the static figure and drops the view."
    figure = nbformat.v4.new_output('display_data', data={'image/png': 'iVBOR', 'text/plain': '<Figure>'})
    widget = nbformat.v4.new_output('display_data', data={make_docs.WIDGET: {'model_id': 'x'},
                                                           'text/plain': 'interactive(children=(FloatSlider(...'})
    cell = nbformat.v4.new_code_cell('plot(); interact(plot, t=(1, 100))', outputs=[figure, widget])
    make_docs.drop_widgets(cell)
    assert cell.outputs == [figure]
