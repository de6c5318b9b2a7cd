"Shared pytest fixtures for minisiglip's tests."
import os, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_env() -> dict:
    "Environment for subprocesses: this interpreter's bin dir first on PATH, plotting headless."
    env = dict(os.environ, MPLBACKEND='Agg', PYTHONUNBUFFERED='1')
    env['PATH'] = str(Path(sys.executable).parent) + os.pathsep + env.get('PATH', '')
    return env


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU (tests/gpu: skipped elsewhere, run by check.sh)')
