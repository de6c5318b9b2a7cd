"""The GPU check's figures file: `record` (a fixture) adds a measured figure, and every test's outcome is
added as it ends, with the first lines of a failure, so that `summary.py` can report what passed, failed or
was skipped even when the run stopped early. Only under `check.sh`, which sets GPU_FIGURES: the plain suite
leaves no file behind."""
import json
import os
from pathlib import Path

import pytest

FIGURES = Path(os.environ['GPU_FIGURES']) if 'GPU_FIGURES' in os.environ else None


def record_figure(key: str, value) -> None:
    "Set `key` of the figures file (a JSON object) to `value`, keeping what is there."
    if FIGURES is None: return
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps({**figures, key: value}, indent=1))


@pytest.fixture
def record():
    "`record(key, value)`: add one measured figure to the figures file."
    return record_figure


def pytest_runtest_logreport(report):
    "Add each test's outcome (and, for a failure, its error) to the figures file's 'tests'."
    if FIGURES is None or (report.when != 'call' and report.passed): return   # setup failures and skips count
    if report.skipped and isinstance(report.longrepr, tuple): detail = report.longrepr[2]
    else: detail = '\n'.join(l for l in report.longreprtext.splitlines() if l.startswith('E '))[:2000]
    tests = json.loads(FIGURES.read_text()).get('tests', {}) if FIGURES.exists() else {}
    tests[report.nodeid.split('::')[-1]] = dict(outcome=report.outcome, seconds=round(report.duration, 1),
                                                detail=detail)
    record_figure('tests', tests)
