"""Figures quoted in prose are generated from saved results; these tests check that the committed text still is.

The README and the lessons insert measured numbers with cells that render Markdown from committed JSON files
(`demo_metrics.json`, `paper_runs.jsonl`, ...). `nbdev_test` runs those cells, but it does not compare what they
print with what is committed: a JSON file re-measured without re-running the notebook would leave stale numbers in
the rendered lesson and the README. Here each such notebook is executed as `nbdev_test` does (slow cells skipped)
and every Markdown output must equal the committed one.
"""
import json
from pathlib import Path

import pytest
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.process import NBProcessor
from nbdev.frontmatter import FrontmatterProc

NBS = Path(__file__).resolve().parent.parent / 'nbs'
GENERATED = ['index.ipynb', '06a_demo.ipynb', '08_vlm_eval.ipynb', '08a_vlm_lessons.ipynb',   # the notebooks whose
             '09_paper.ipynb']                                                             # prose quotes saved results


def markdown_outputs(cells) -> list[str]:
    "The text/markdown outputs of code cells, in order (what the docs and the README show as prose)."
    out = []
    for cell in cells:
        for o in cell.get('outputs', []) if cell['cell_type'] == 'code' else []:
            md = o.get('data', {}).get('text/markdown')
            if md is not None: out.append(''.join(md) if isinstance(md, list) else md)
    return out


def is_skipped(cell) -> bool:
    "nbdev_test's rule: markdown, the export cell and `slow` cells are not run."
    if cell.cell_type != 'code' or 'nbdev_export(' in cell.source: return True
    return 'slow' in (getattr(cell, 'directives_', {}) or {})


@pytest.mark.parametrize('name', GENERATED)
def test_committed_prose_matches_saved_results(name):
    path = NBS / name
    committed = json.loads(path.read_text())['cells']
    slow = {i for i, c in enumerate(committed) if c['cell_type'] == 'code' and '#| slow' in ''.join(c['source'])}
    expected = markdown_outputs([c for i, c in enumerate(committed) if i not in slow])
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    shell = CaptureShell(path)
    with working_directory(NBS):
        shell.run_all(nb, exc_stop=True, preproc=is_skipped)
    fresh = markdown_outputs([c for c in nb.cells if not is_skipped(c)])
    assert expected, f'{name} has no generated prose to check'
    for old, new in zip(expected, fresh):
        assert old == new, f'{name}: committed prose differs from what its saved results give now:\n{old}\n---\n{new}'
    assert len(expected) == len(fresh), f'{name}: {len(expected)} committed Markdown outputs, {len(fresh)} now'
