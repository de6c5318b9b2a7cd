"""The GPU check (issue 37), run by `bash tests/gpu/check.sh`: every loss's parity on the GPU (plain, chunked,
the fused kernel when it exists, ring and all-gathers over every GPU present), 16-bit against float64, memory
and time against the matmul floor of the loss's own product dtype, the host syncs of a training step on every
loss path, a `torchrun` training run on NCCL that stops and resumes, and the CPU run against the GPU run. Each
test records its figures in `GPU_FIGURES` (gpu_figures.json) as it goes (`record`, conftest.py).

`GPU_CHECK_DEVICE=cpu` rehearses all of it on the CPU at small sizes, gloo standing in for NCCL (and two
processes for two GPUs); `tests/test_gpu_check.py` runs that rehearsal. Without it the tests skip where no GPU
is visible."""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minisiglip.chunked import chunked_sigmoid_loss
from minisiglip.distributed import LOSSES, loss_steps, spawn
from minisiglip.losses import peak_bytes, sigmoid_loss, softmax_loss, synchronize
from minisiglip.train import TrainConfig, count_step_syncs, train
from minisiglip.checkpoint import latest_checkpoint, read_state

DEVICE = os.environ.get('GPU_CHECK_DEVICE', 'cuda')
REHEARSAL = DEVICE == 'cpu'
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
WORLD = 2 if REHEARSAL else max(GPUS, 1)                 # processes of the multi-process checks: one per GPU
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not REHEARSAL and GPUS == 0, reason='needs a CUDA GPU')]
BIN = Path(sys.executable).parent
try:
    from minisiglip.kernels import fused_sigmoid_loss
    NO_KERNEL = ''
except ImportError as e:                                 # 02c's kernel has not landed (or Triton is missing)
    fused_sigmoid_loss, NO_KERNEL = None, f'no fused kernel: {e}'


def unit(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    "n unit vectors of width d, drawn in float64 from `seed`, then rounded to `dtype` on DEVICE."
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).to(DEVICE, dtype)


def value_and_grads(loss_fn, x, y, t: float, b: float) -> list[torch.Tensor]:
    "The loss and its gradients with respect to x, y, scale and bias (float32; float64 for float64 inputs)."
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    t, b = (torch.tensor(v, dtype=dt, device=x.device, requires_grad=True) for v in (t, b))
    loss = loss_fn(x, y, t, b)
    return [loss.detach(), *torch.autograd.grad(loss, (x, y, t, b))]


def single_device_losses() -> dict:
    "The one-device losses: plain, chunked over several chunks, and the fused kernel if it exists."
    losses = {'plain': sigmoid_loss, 'chunked': lambda *a: chunked_sigmoid_loss(*a, 100)}
    return losses | ({'kernel': fused_sigmoid_loss} if fused_sigmoid_loss else {})


def largest_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    "The largest error of value and gradients, relative to each reference's largest entry."
    return max(((g.cpu().double() - w.cpu().double()).abs().max() / w.abs().max().clamp_min(1e-30)).item()
               for g, w in zip(got, want))


def test_environment(record):
    "What ran the check: PyTorch, CUDA, the GPUs, and whether the fused kernel was there."
    gpus = [torch.cuda.get_device_name(i) for i in range(GPUS)]
    record('environment', dict(device=DEVICE, torch=torch.__version__, cuda=torch.version.cuda, gpus=gpus,
                               world=WORLD, kernel=NO_KERNEL or 'present'))


def test_parity_on_one_device(record):
    "Every one-device loss in float64 (the kernel in float32) against the CPU's float64 reference."
    x, y = unit(512, 64, torch.float64), unit(512, 64, torch.float64, seed=1)
    want = value_and_grads(sigmoid_loss, x.cpu(), y.cpu(), 10., -10.)
    errors = {}
    for name, fn in single_device_losses().items():
        dt = torch.float32 if name == 'kernel' else torch.float64
        errors[name] = largest_error(value_and_grads(fn, x.to(dt), y.to(dt), 10., -10.), want)
    record('parity_float64', errors)
    assert all(e < (1e-5 if name == 'kernel' else 1e-10) for name, e in errors.items()), errors


def test_parity_over_processes(record):
    "Ring (both ways) and both all-gathers on every GPU (NCCL): the full batch's loss and per-rank gradients."
    b, d = 64, 32
    res = spawn(loss_steps, WORLD, list(LOSSES), b, d, 0, 16, 3.7, -2.3, torch.float64, 1, DEVICE,
                device=DEVICE)
    errors = {}
    for i, method in enumerate(LOSSES):
        g = torch.Generator().manual_seed(0)                        # the global batch `loss_steps` draws
        x, y = (F.normalize(torch.randn(WORLD * b, d, generator=g, dtype=torch.float64), dim=-1)
                .requires_grad_() for _ in range(2))
        t, c = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (3.7, -2.3))
        ref = softmax_loss(x, y, t) if method == 'gather-softmax' else sigmoid_loss(x, y, t, c)
        (WORLD * ref).backward()
        rows = [slice(r[i]['rank'] * b, (r[i]['rank'] + 1) * b) for r in res]
        got = [sum(r[i]['loss'] for r in res) / WORLD,
               *(torch.cat([r[i][k] for r in res]) for k in ('dzimg', 'dztxt'))]
        errors[method] = largest_error(got, [ref.detach(), torch.cat([x.grad[s] for s in rows]),
                                             torch.cat([y.grad[s] for s in rows])])
    record('parity_over_processes', dict(world=WORLD, errors=errors))
    assert all(e < 1e-10 for e in errors.values()), errors


def test_low_precision_against_fp64(record):
    """bf16/fp16 embeddings: each loss in float32 within 1e-4 of float64 on the same rounded values, no fp16
    overflow, autocast-proof; gradients over several chunks (16-bit products on a GPU) within the dtype's
    rounding."""
    n = 1024 if REHEARSAL else 8192                          # on a GPU fp16's positives alone pass 65504
    errors = {}
    for name, dt in (('bf16', torch.bfloat16), ('fp16', torch.float16)):
        x, y = unit(n, 64, dt), unit(n, 64, dt, seed=1)
        ref = sigmoid_loss(x.double(), y.double(), 10., -10.).item()
        for loss, fn in single_device_losses().items():
            got = fn(x, y, 10., -10.)
            with torch.autocast(DEVICE, dtype=dt): under = fn(x, y, 10., -10.)
            assert got.dtype == under.dtype == torch.float32, (loss, name)
            errors[f'{loss} {name} loss'] = abs(got.item() - ref) / ref
            assert errors[f'{loss} {name} loss'] < 1e-4 and abs(under.item() - got.item()) / ref < 1e-5
        xs, ys = x[:256], y[:256]                                   # gradients too, over several chunks
        want = value_and_grads(sigmoid_loss, xs.double(), ys.double(), 10., -10.)
        for loss, fn in single_device_losses().items():
            got = value_and_grads(fn, xs, ys, 10., -10.)
            assert got[1].dtype == got[2].dtype == dt
            errors[f'{loss} {name} gradients'] = largest_error(got, want)
    record('low_precision_relative_error', errors)
    assert all(e < 2e-2 for k, e in errors.items() if k.endswith('gradients')), errors


def floor_seconds(n: int, d: int, dtype: torch.dtype, reps: int = 3) -> float:
    """The matmul floor of a loss's forward + backward on `n` pairs of width `d` whose products take `dtype`:
    three `(n, d) x (d, n)` products (logits, and the two gradients), timed in slabs of 4,096 columns with
    float32 results (a 16-bit GEMM with a float32 result on a GPU, as the chunked loss runs them; float32 on
    the CPU, as it does)."""
    a, w = (torch.randn(rows, d, device=DEVICE, dtype=dtype) for rows in (n, min(n, 4096)))
    out = torch.empty(n, len(w), device=DEVICE)
    low = dtype != torch.float32 and DEVICE == 'cuda'
    product = (lambda: torch.mm(a, w.T, out_dtype=torch.float32, out=out)) if low else \
              (lambda: torch.mm(a.float(), w.float().T, out=out))
    product(); synchronize(DEVICE)
    t0 = time.perf_counter()
    for _ in range(reps): product()
    synchronize(DEVICE)
    return 3 * (time.perf_counter() - t0) / reps * n / len(w)


def products_dtype(loss: str, dtype: torch.dtype) -> torch.dtype:
    "The dtype a loss multiplies `dtype` embeddings in: the plain loss and any CPU upcast to float32."
    return dtype if loss != 'plain' and DEVICE == 'cuda' else torch.float32


def test_memory_and_speed(record):
    """Peak memory and fwd+bwd time of the plain, chunked (and kernel) losses at n = 32,768, d = 768, on bf16
    and float32 embeddings, each against the floor of its own products' dtype. Memory is asserted, and on a
    GPU that 16-bit products make the chunked loss faster than float32 ones; the times are recorded."""
    n, d = (2048, 64) if REHEARSAL else (32768, 768)
    floors, rows = {dt: floor_seconds(n, d, dt) for dt in (torch.bfloat16, torch.float32)}, {}
    for name, dt in (('bf16', torch.bfloat16), ('fp32', torch.float32)):
        x, y = (unit(n, d, dt, seed=s).requires_grad_() for s in (0, 1))
        t, b = (torch.tensor(v, device=DEVICE, requires_grad=True) for v in (10., -10.))
        losses = {'plain': sigmoid_loss, 'chunked': lambda *a: chunked_sigmoid_loss(*a, 4096)}
        if fused_sigmoid_loss and not REHEARSAL: losses['kernel'] = fused_sigmoid_loss   # interpreted: slow
        for loss, fn in losses.items():
            def step():
                for p in (x, y, t, b): p.grad = None
                fn(x, y, t, b).backward()
            step(); synchronize(DEVICE)
            t0 = time.perf_counter()
            for _ in range(3): step()
            synchronize(DEVICE)
            seconds, floor = (time.perf_counter() - t0) / 3, floors[products_dtype(loss, dt)]
            rows[f'{loss} {name}'] = dict(seconds=seconds, floor_s=floor, over_floor=seconds / floor,
                                          peak_bytes=peak_bytes(step, DEVICE))
        del x, y
    record('memory_and_speed', dict(n=n, d=d, rows=rows))
    for name in ('bf16', 'fp32'):
        assert rows[f'chunked {name}']['peak_bytes'] < rows[f'plain {name}']['peak_bytes'] / 4, rows
    if not REHEARSAL: assert rows['chunked bf16']['seconds'] < rows['chunked fp32']['seconds'], rows


SYNC_PATHS = {'sigmoid': {}, 'chunked': dict(loss='chunked'), 'ring': dict(loss='ring'),
              'ring bidir': dict(loss='ring', ring='bidir'), 'softmax': dict(loss='softmax'),
              'bf16': dict(precision='bf16'), 'fp16': dict(precision='fp16'), 'tf32': dict(precision='tf32')}


def test_host_syncs_of_a_training_step(record):
    "At most two host syncs per training step on every loss path, in one process and on every GPU (NCCL)."
    base = TrainConfig(batch_size=16 if REHEARSAL else 64, n_train=256, device=DEVICE, out_dir='')
    cfgs = [dataclasses.replace(base, **kw) for kw in SYNC_PATHS.values()]
    counts = {'1 process': dict(zip(SYNC_PATHS, count_step_syncs(*cfgs)))}
    if WORLD > 1:
        per_rank = spawn(count_step_syncs, WORLD, *cfgs, device=DEVICE)
        counts[f'{WORLD} processes, the most of any rank'] = dict(zip(SYNC_PATHS, map(max, zip(*per_rank))))
    record('host_syncs_per_step', counts)
    assert all(c <= 2 for per_path in counts.values() for c in per_path.values()), counts


def run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    "Run a command, failing the test with the end of its output if it fails."
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{out}"
    return p


def torchrun(*args: str) -> list[str]:
    "`torchrun` on this machine with one process per GPU (two CPU processes in the rehearsal)."
    return [str(BIN / 'torchrun'), '--standalone', f'--nproc-per-node={min(WORLD, 2)}', *args]


def test_torchrun_train_stops_and_resumes(tmp_path, record):
    """`minisiglip train` under torchrun on NCCL (2 GPUs, or 1): the ring with bf16 towers, stopped at step 3
    and resumed, follows the uninterrupted run; and the distributed benchmark command runs on NCCL."""
    train_args = ['--no-python', str(BIN / 'minisiglip'), 'train', '--device', DEVICE, '--loss', 'ring',
                  '--precision', 'bf16', '--steps', '6', '--batch-size', '32', '--n-train', '256',
                  '--warmup-steps', '1', '--eval-every', '3', '--ckpt-every', '3']
    run(torchrun(*train_args, '--out-dir', str(tmp_path / 'whole')))
    run(torchrun(*train_args, '--out-dir', str(tmp_path / 'resumed'), '--stop-at', '3'))
    run(torchrun(*train_args, '--out-dir', str(tmp_path / 'resumed'), '--resume'))
    whole, resumed = (read_state(latest_checkpoint(tmp_path / k))['history']['loss']
                      for k in ('whole', 'resumed'))
    bench = tmp_path / 'bench.json'
    # no --d: torchrun would take it for an abbreviation of one of its own options
    run(torchrun('-m', 'minisiglip.distributed', '--device', DEVICE, '--batch', '256', '--json', str(bench)))
    record('torchrun', dict(world=min(WORLD, 2), whole=whole, resumed=resumed,
                            bench=json.loads(bench.read_text())))
    assert len(whole) == 6 and all(map(lambda v: v == v, whole)) and whole[-1] < whole[0]
    assert resumed == pytest.approx(whole, abs=1e-4)


def test_training_on_the_gpu_follows_the_cpu_and_resumes(tmp_path, record):
    "30 steps on the GPU against the same 30 on the CPU (stated tolerance), bf16 alongside, and a resume."
    steps = 12 if REHEARSAL else 30
    base = TrainConfig(steps=steps, batch_size=32 if REHEARSAL else 64, n_train=2000, warmup_steps=steps // 3,
                       eval_every=0, ckpt_every=steps // 2)
    runs = {name: train(dataclasses.replace(base, out_dir=str(tmp_path / name), **kw))[1]['history']['loss']
            for name, kw in (('cpu', dict(device='cpu')), ('gpu', dict(device=DEVICE)),
                             ('gpu bf16', dict(device=DEVICE, precision='bf16')))}
    stopped = dataclasses.replace(base, device=DEVICE, out_dir=str(tmp_path / 'resumed'))
    train(stopped, stop_at=steps // 2)
    runs['gpu resumed'] = train(stopped, resume=True)[1]['history']['loss']
    record('loss_curves', runs)
    cpu, gpu = runs['cpu'], runs['gpu']
    assert all(abs(a - b) < 0.01 * a for a, b in zip(cpu[:3], gpu[:3]))             # first 3 steps: within 1%
    last = lambda h: sum(h[-steps // 3:]) / (steps // 3)
    assert abs(last(gpu) - last(cpu)) < 0.05 * last(cpu)
    assert abs(last(runs['gpu bf16']) - last(cpu)) < 0.1 * last(cpu)
    assert max(abs(a - b) for a, b in zip(runs['gpu resumed'], gpu)) < 1e-3
