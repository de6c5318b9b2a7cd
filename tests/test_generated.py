"""Figures quoted in prose are generated from saved results; these tests check that the committed text still is.

The README and the lessons insert measured numbers with cells that render Markdown from committed JSON files
(`demo_metrics.json`, `paper_runs.jsonl`, ...). `nbdev_test` runs those cells, but it does not compare what they
print with what is committed: a JSON file re-measured without re-running the notebook would leave stale numbers in
the rendered lesson and the README. Here each such notebook is executed as `nbdev_test` does (slow cells skipped)
and every Markdown output must equal the committed one.

A figure measured on the spot (not read from a file) belongs in that prose only as what the measurement supports on
any CPU, such as a bound it is checked against: its last digits depend on the CPU's kernels. So the notebooks run
here in a child process whose math kernels are held to AVX2 (`OTHER_CPU`), the instruction set of a CPU without
AVX-512 such as AMD's EPYC, while the committed outputs come from a machine with AVX-512: a figure printed to its
last digits then differs here, on every machine, instead of only on a user's. The child keeps its own
`torch.compile` cache: PyTorch's shared one would hand its AVX2 kernels to later processes, which crash on them.
"""
import json, os, subprocess, sys
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parent.parent / 'nbs'
GENERATED = ['index.ipynb', '03_data.ipynb', '03b_streaming.ipynb', '06a_demo.ipynb',   # the notebooks whose prose
             '06b_demo_recipes.ipynb', '08_vlm_eval.ipynb', '08a_vlm_lessons.ipynb',        # quotes saved results
             '08b_vlm_recipes.ipynb', '08c_vlm_robustness.ipynb', '09_paper.ipynb', '09b_siglip2.ipynb',
             '09c_paper_trials.ipynb', '09d_siglip2_recipe.ipynb', '09e_siglip2_claims.ipynb']
OTHER_CPU = {'ATEN_CPU_CAPABILITY': 'avx2',        # PyTorch's own vectorised kernels (reductions, elementwise)
             'MKL_ENABLE_INSTRUCTIONS': 'AVX2',    # MKL's matrix products
             'ONEDNN_MAX_CPU_ISA': 'AVX2'}         # oneDNN's (no AMX, no AVX-512)


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


def fresh_markdown(name: str) -> list[str]:
    "Run notebook `name` as `nbdev_test` does, in this process, and return its Markdown outputs."
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    path = NBS / name
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    shell = CaptureShell(path)
    with working_directory(NBS):
        shell.run_all(nb, exc_stop=True, preproc=is_skipped)
    return markdown_outputs([c for c in nb.cells if not is_skipped(c)])


@pytest.mark.parametrize('name', GENERATED)
def test_committed_prose_matches_saved_results(name, tmp_path):
    committed = json.loads((NBS / name).read_text())['cells']
    slow = {i for i, c in enumerate(committed) if c['cell_type'] == 'code' and '#| slow' in ''.join(c['source'])}
    expected = markdown_outputs([c for i, c in enumerate(committed) if i not in slow])
    child = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=900,
                           env={**os.environ, **OTHER_CPU, 'MPLBACKEND': 'Agg',
                                'TORCHINDUCTOR_CACHE_DIR': str(tmp_path)})   # kernels compiled for AVX2 stay here
    assert child.returncode == 0, f'{name} failed to run:\n{child.stderr[-3000:]}'
    fresh = json.loads(child.stdout.splitlines()[-1])
    assert expected, f'{name} has no generated prose to check'
    for old, new in zip(expected, fresh):
        assert old == new, f'{name}: committed prose differs from what its saved results give now:\n{old}\n---\n{new}'
    assert len(expected) == len(fresh), f'{name}: {len(expected)} committed Markdown outputs, {len(fresh)} now'


if __name__ == '__main__':                      # the child process of the test above: one notebook's Markdown as JSON
    print(json.dumps(fresh_markdown(sys.argv[1])))
