"""Triton's interpreter in a process that imported Triton for the compiler first, as `nbdev_test` gives 02b and 02c
a worker that may have run a `torch.compile` notebook before: `bench.use_triton_interpreter` must make the kernel run."""
import subprocess, sys

import pytest

SETUP = """
import torch, triton                                 # imported for the compiler first, as torch.compile would
import torch.nn.functional as F
x, y = (F.normalize(torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s)), dim=-1)
        for s in (0, 1))
t, b = torch.tensor(10., dtype=torch.float64), torch.tensor(-10., dtype=torch.float64)
"""
RUN = """
from minisiglip.kernels import fused_sigmoid_loss
from minisiglip.losses import sigmoid_loss
assert abs(fused_sigmoid_loss(x, y, t, b) - sigmoid_loss(x, y, t, b)) < 1e-12
"""


def run(code: str, run_env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in run_env.items() if k != 'TRITON_INTERPRET'} | {'CUDA_VISIBLE_DEVICES': ''}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize('switch, ok', [("import os; os.environ['TRITON_INTERPRET'] = '1'", False),
                                        ('from minisiglip.bench import use_triton_interpreter; '
                                         'use_triton_interpreter()', True)])
def test_interpreter_after_triton_was_imported(switch, ok, run_env):
    "Setting the variable alone fails inside the kernel (Triton's library stays compiled); the function works."
    res = run(SETUP + switch + RUN, run_env)
    assert (res.returncode == 0) == ok, res.stderr[-1500:]
    if not ok: assert "outside of the scope of a kernel" in res.stderr, res.stderr[-1500:]
