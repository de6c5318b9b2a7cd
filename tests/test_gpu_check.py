"""The GPU check rehearsed on the CPU: `tests/gpu/check.sh` with GPU_CHECK_DEVICE=cpu runs every GPU test at
small sizes, the CPU standing in for the GPUs, gloo for NCCL (two processes for two GPUs) and Triton's
interpreter for the fused kernel, writes the figures and prints the summary. It keeps the script that a lent
GPU's few minutes depend on from rotting between GPUs (about 40 s on 2 cores)."""
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_CHECKS = [line.split('(')[0][4:] for line in (REPO / 'tests/gpu/test_gpu.py').read_text().splitlines()
              if line.startswith('def test_')]                       # test_gpu.py's tests; test_kernel.py's skip


def test_gpu_check_rehearsed_on_the_cpu(tmp_path, run_env):
    figures = tmp_path / 'gpu_figures.json'
    env = {**run_env, 'GPU_CHECK_DEVICE': 'cpu', 'GPU_FIGURES': str(figures), 'OMP_NUM_THREADS': '1'}
    p = subprocess.run(['bash', str(REPO / 'tests/gpu/check.sh')], capture_output=True, text=True, env=env,
                       timeout=600)
    log = figures.with_suffix('.log')
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}\n{log.read_text() if log.exists() else ''}"
    tests = json.loads(figures.read_text())['tests']
    ours = [name for name in tests if name in GPU_CHECKS]
    assert len(ours) == len(GPU_CHECKS) and all(tests[name]['outcome'] == 'passed' for name in ours), tests
    assert all(t['outcome'] == 'skipped' for name, t in tests.items() if name not in ours), tests   # CUDA only
    assert '== GPU check on cpu' in p.stdout, p.stdout
    assert 'host syncs per step, 2 processes' in p.stdout and 'parity on 2 processes' in p.stdout, p.stdout
