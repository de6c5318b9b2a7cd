"""The GPU check (issue 16). Skipped without CUDA; `bash tests/gpu/check.sh` runs it on a GPU machine, prints the
figures it records (`GPU_FIGURES`, default gpu_figures.json) and then the whole suite. Meant to take under 5 minutes
on one GPU (not yet measured: no GPU has run it); the NCCL parity test uses every GPU present (up to 8)."""
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minisiglip.chunked import chunked_sigmoid_loss
from minisiglip.distributed import LOSSES, loss_steps, spawn
from minisiglip.losses import peak_bytes, sigmoid_loss, softmax_loss, synchronize

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason='needs a CUDA GPU')]
FIGURES = Path(os.environ.get('GPU_FIGURES', 'gpu_figures.json'))


def record(key: str, value) -> None:
    "Add one measured figure to the figures file (a JSON object), for the notebook and the issue note."
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps({**figures, key: value}, indent=1))


def unit(n: int, d: int, dtype: torch.dtype, seed: int = 0, device: str = 'cuda') -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).to(device, dtype)


def value_and_grads(loss_fn, x, y, t: float, b: float) -> list[torch.Tensor]:
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    t, b = (torch.tensor(v, dtype=dt, device=x.device, requires_grad=True) for v in (t, b))
    loss = loss_fn(x, y, t, b)
    return [loss.detach(), *torch.autograd.grad(loss, (x, y, t, b))]


def test_fp64_parity_on_one_gpu():
    "Plain and chunked loss and gradients on CUDA in float64 equal the CPU reference."
    x, y = unit(512, 64, torch.float64), unit(512, 64, torch.float64, seed=1)
    want = value_and_grads(sigmoid_loss, x.cpu(), y.cpu(), 10., -10.)
    for fn in (sigmoid_loss, lambda *a: chunked_sigmoid_loss(*a, 100)):
        for got, w in zip(value_and_grads(fn, x, y, 10., -10.), want):
            torch.testing.assert_close(got.cpu(), w, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(GPUS < 2, reason='needs 2 GPUs for NCCL')
def test_fp64_parity_over_nccl():
    "Ring (both directions) and both all-gather baselines on W GPUs: mean loss and per-rank gradients of W * L."
    W, b, d = min(GPUS, 8), 64, 32
    res = spawn(loss_steps, W, list(LOSSES), b, d, 0, 16, 3.7, -2.3, torch.float64, 1, 'cuda', device='cuda')
    for i, method in enumerate(LOSSES):
        g = torch.Generator().manual_seed(0)                        # the global batch `loss_steps` draws
        x, y = (F.normalize(torch.randn(W * b, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
                for _ in range(2))
        t, c = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (3.7, -2.3))
        ref = softmax_loss(x, y, t) if method == 'gather-softmax' else sigmoid_loss(x, y, t, c)
        (W * ref).backward()
        torch.testing.assert_close(sum(r[i]['loss'] for r in res) / W, ref.detach(), rtol=1e-10, atol=1e-12)
        for r in res:
            rows = slice(r[i]['rank'] * b, (r[i]['rank'] + 1) * b)
            torch.testing.assert_close(r[i]['dzimg'], x.grad[rows], rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(r[i]['dztxt'], y.grad[rows], rtol=1e-8, atol=1e-12)
    record('nccl_parity_world_size', W)


def test_low_precision_against_fp64():
    "bf16/fp16 embeddings: float32 loss within 1e-4 of float64 on the same values, no fp16 overflow, autocast-proof."
    errors = {}
    for name, dt in (('bf16', torch.bfloat16), ('fp16', torch.float16)):
        x, y = unit(8192, 64, dt), unit(8192, 64, dt, seed=1)        # fp16: the positives alone sum past 65504
        ref = sigmoid_loss(x.double(), y.double(), 10., -10.).item()
        for loss, fn in (('sigmoid', sigmoid_loss), ('chunked', lambda *a: chunked_sigmoid_loss(*a, 1024))):
            got = fn(x, y, 10., -10.)
            with torch.autocast('cuda', dtype=dt): under = fn(x, y, 10., -10.)
            assert got.dtype == under.dtype == torch.float32
            errors[f'{loss} {name}'] = abs(got.item() - ref) / ref
            assert errors[f'{loss} {name}'] < 1e-4 and abs(under.item() - got.item()) / ref < 1e-5
        xs, ys = x[:256], y[:256]                                     # gradients too, over several chunks
        got = value_and_grads(lambda *a: chunked_sigmoid_loss(*a, 64), xs, ys, 10., -10.)
        want = value_and_grads(sigmoid_loss, xs.double(), ys.double(), 10., -10.)
        assert got[1].dtype == got[2].dtype == dt
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, rtol=2e-2, atol=1e-3 * w.abs().max().item())
    record('low_precision_relative_error', errors)


def test_memory_and_speed_at_32k():
    "Peak memory and fwd+bwd time of the naive and the chunked loss at n = 32,768, d = 768, bf16, against the floor."
    n, d = 32768, 768
    x, y = (unit(n, d, torch.bfloat16, seed=s).requires_grad_() for s in (0, 1))
    t, b = (torch.tensor(v, device='cuda', requires_grad=True) for v in (10., -10.))
    a, w = (torch.randn(rows, d, device='cuda', dtype=torch.bfloat16) for rows in (n, 4096))
    def seconds(fn, reps=5):
        fn(); synchronize('cuda'); t0 = time.perf_counter()
        for _ in range(reps): fn()
        synchronize('cuda'); return (time.perf_counter() - t0) / reps
    floor_s = 3 * seconds(lambda: a @ w.T) * n / 4096                   # 6 n^2 d flops at this GPU's bf16 GEMM rate
    rows = {'floor_s': floor_s}
    for name, fn in (('naive', sigmoid_loss), ('chunked', lambda *a: chunked_sigmoid_loss(*a, 4096))):
        def step():
            for p in (x, y, t, b): p.grad = None
            fn(x, y, t, b).backward()
        rows[name] = dict(seconds=seconds(step, 3), peak_bytes=peak_bytes(step, 'cuda'))
    record('memory_and_speed_32k_768_bf16', rows)
    assert rows['chunked']['peak_bytes'] < rows['naive']['peak_bytes'] / 4


def test_host_syncs_in_a_training_step():
    "One training step on CUDA syncs the host at most 4 times (embeddings, loss inputs, token ids, statistics)."
    from minisiglip.train import (TrainConfig, build_model, builtin_data, get_batch, make_loss, make_optimizer,
                                  train_step)
    cfg = TrainConfig(device='cuda', batch_size=64, n_train=256)
    train_ds, _, tok = builtin_data('shapes', 256, 0, 32)
    model = build_model(cfg, tok).cuda().train()
    opt = make_optimizer(model, cfg)
    images, tokens = get_batch(train_ds, tok, torch.arange(64), torch.device('cuda'))
    counts = {}
    for loss in ('sigmoid', 'chunked', 'ring'):
        loss_fn = make_loss(dataclasses.replace(cfg, loss=loss), 1)
        train_step(model, opt, loss_fn, images, tokens, 0, 1e-4, 1.)                   # warm-up
        torch.cuda.set_sync_debug_mode('warn')
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                train_step(model, opt, loss_fn, images, tokens, 1, 1e-4, 1.)
        finally: torch.cuda.set_sync_debug_mode(0)
        counts[loss] = [str(w.message) for w in caught if 'synchroniz' in str(w.message).lower()]
    record('host_syncs_per_step', {k: len(v) for k, v in counts.items()})
    assert all(len(v) <= 4 for v in counts.values()), counts


def test_training_on_cuda_follows_cpu_and_resumes(tmp_path):
    "50 steps on CUDA against the same 50 on CPU (stated tolerance), bf16 alongside, and an exact-enough resume."
    from minisiglip.train import TrainConfig, train
    base = TrainConfig(steps=50, batch_size=64, n_train=2000, warmup_steps=10, eval_every=0, ckpt_every=25)
    runs = {name: train(dataclasses.replace(base, out_dir=str(tmp_path / name), **kw))[1]['history']['loss']
            for name, kw in (('cpu', dict(device='cpu')), ('cuda', dict(device='cuda')),
                             ('bf16', dict(device='cuda', precision='bf16')))}
    record('loss_curves_50_steps', runs)
    cpu, gpu = runs['cpu'], runs['cuda']
    assert all(abs(a - b) < 0.01 * a for a, b in zip(cpu[:3], gpu[:3]))             # first 3 steps: within 1%
    last = lambda h: sum(h[-10:]) / 10
    assert abs(last(gpu) - last(cpu)) < 0.05 * last(cpu) and abs(last(runs['bf16']) - last(cpu)) < 0.1 * last(cpu)
    stopped = dataclasses.replace(base, device='cuda', out_dir=str(tmp_path / 'resumed'))
    train(stopped, stop_at=25)
    resumed = train(stopped, resume=True)[1]['history']['loss']
    assert max(abs(a - b) for a, b in zip(resumed, gpu)) < 1e-3
