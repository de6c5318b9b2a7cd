"""The Jupyter walkthrough: every notebook runs top to bottom in a fresh Jupyter kernel (nbclient), as it runs for a
newcomer who opens `jupyter lab nbs/`, not only in nbdev_test's in-process shell. Cells marked `#| slow` are left out
(their committed outputs show the long runs), as are `#| eval: false` cells and the closing `nbdev_export()` call,
which would rewrite the library while other notebooks import it. Two notebooks run at a time, one per core."""
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = Path(__file__).resolve().parent.parent / 'nbs'
NOTEBOOKS = sorted(p.name for p in NBS.glob('*.ipynb'))
SKIPPED = re.compile(r'^#\|\s*(slow\b|eval:\s*false)|nbdev_export\(\)', re.M)


def run_in_kernel(name: str) -> None:
    "Execute notebook `name` in a fresh python3 kernel started in nbs/, without its skipped cells."
    nb = nbformat.read(NBS / name, as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type != 'code' or not SKIPPED.search(c.source)]
    NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': str(NBS)}}).execute()


@pytest.fixture(scope='module')
def failures() -> dict[str, BaseException | None]:
    """Each notebook's exception (None when it ran through), two kernels at a time, each with one thread: two kernels
    of two threads on two cores would spend their time waiting on each other."""
    threads = os.environ.get('OMP_NUM_THREADS')
    os.environ['OMP_NUM_THREADS'] = '1'                             # the kernels inherit it
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = {name: pool.submit(run_in_kernel, name) for name in NOTEBOOKS}
    finally:
        if threads is None: del os.environ['OMP_NUM_THREADS']
        else: os.environ['OMP_NUM_THREADS'] = threads
    return {name: run.exception() for name, run in runs.items()}


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom_in_a_fresh_kernel(failures, name):
    if failures[name] is not None: raise failures[name]
