"""Multi-process checks of minisiglip.distributed on gloo (CPU): ring and all-gather losses against the single-process
full batch, DDP gradients, input errors, and dead or hanging peers. Workers live in this module so that
`torch.multiprocessing.spawn` can pickle them (pytest puts tests/ on sys.path, and spawned children inherit it)."""
import argparse
import functools
import os
import subprocess
import sys
import time
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
import minisiglip.distributed as md
from minisiglip.losses import sigmoid_loss, softmax_loss, masked_sigmoid_loss, ScaleBias
from minisiglip.distributed import (LOSSES, CommStats, _check_same_shape, loss_step, ring_sigmoid_loss,
                                    gather_softmax_loss, gather_sigmoid_loss, gathered_loss, spawn)

B, D, SEED, CHUNK, SCALE, BIAS = 4, 5, 7, 3, 3.7, -2.3     # chunk 3 does not divide b = 4: a ragged last chunk


def full_batch(method, W):
    "Loss and gradients of W * L on the global batch loss_step draws (the sum of the rank losses, see the notebook)."
    g = torch.Generator().manual_seed(SEED)
    x, y = (F.normalize(torch.randn(W * B, D, generator=g, dtype=torch.float64), dim=-1).requires_grad_() for _ in range(2))
    t, c = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (SCALE, BIAS))
    loss = softmax_loss(x, y, t) if method == 'gather-softmax' else sigmoid_loss(x, y, t, c)
    (W * loss).backward()
    return loss.detach(), x.grad, y.grad, t.grad, c.grad


def _every_method():
    return [loss_step(m, B, D, SEED, CHUNK, SCALE, BIAS, torch.float64) for m in LOSSES]


@pytest.mark.parametrize('W', [2, 3, 4])
def test_losses_and_gradients_match_full_batch(W):
    per_rank = spawn(_every_method, W)
    for i, method in enumerate(LOSSES):
        res = [r[i] for r in per_rank]
        loss, gx, gy, gt, gc = full_batch(method, W)
        torch.testing.assert_close(sum(r['loss'] for r in res) / W, loss, rtol=0, atol=1e-12)
        for r in res:
            sl = slice(r['rank'] * B, (r['rank'] + 1) * B)
            torch.testing.assert_close(r['dzimg'], gx[sl], rtol=0, atol=1e-12)
            torch.testing.assert_close(r['dztxt'], gy[sl], rtol=0, atol=1e-12)
        torch.testing.assert_close(sum(r['dscale'] for r in res), gt, rtol=0, atol=1e-12)
        if method != 'gather-softmax':
            torch.testing.assert_close(sum(r['dbias'] for r in res), gc, rtol=0, atol=1e-12)
            steps = {'ring': W - 1, 'ring-bidir': W // 2, 'gather-sigmoid': 2 * (W - 1)}[method]   # gather: textbook
            assert all(r['steps'] == steps for r in res)
            assert all(r['bytes_sent'] == 2 * (W - 1) * B * D * 8 for r in res)   # W-1 text blocks out, W-1 gradients home


def test_world_size_one_without_process_group():
    assert not dist.is_initialized()
    g = torch.Generator().manual_seed(0)
    x, y = (F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    torch.testing.assert_close(ring_sigmoid_loss(x, y, SCALE, BIAS, chunk_size=2), sigmoid_loss(x, y, SCALE, BIAS))
    torch.testing.assert_close(gather_softmax_loss(x, y, SCALE), softmax_loss(x, y, SCALE))
    torch.testing.assert_close(gather_sigmoid_loss(x, y, SCALE, BIAS, chunk_size=2), sigmoid_loss(x, y, SCALE, BIAS))


def _ring_and_gather_sigmoid():
    "Each rank's loss and gradients from the ring and from the all-gather sigmoid, for whole and ragged chunks."
    rank, W = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(SEED)
    zi, zt = (F.normalize(torch.randn(W * B, D, generator=g, dtype=torch.float64), dim=-1)[rank * B:(rank + 1) * B]
              for _ in range(2))
    out = []
    for loss_fn in (ring_sigmoid_loss, gather_sigmoid_loss):
        for chunk_size in (None, CHUNK):
            x, y = zi.clone().requires_grad_(), zt.clone().requires_grad_()
            t, c = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (SCALE, BIAS))
            loss = loss_fn(x, y, t, c, chunk_size=chunk_size)
            out.append((loss.detach(), *torch.autograd.grad(loss, (x, y, t, c))))
    return out


def test_gather_sigmoid_has_the_ring_contract_on_two_ranks():
    "Rank by rank, the all-gather sigmoid gives the ring's loss and gradients; their mean and sum are the full batch's."
    W = 2
    per_rank = spawn(_ring_and_gather_sigmoid, W)
    loss, gx, gy, gt, gc = full_batch('gather-sigmoid', W)
    for rank, results in enumerate(per_rank):
        ring, gather = results[:2], results[2:]
        for r, q in zip(ring + ring, gather + gather[::-1]):     # both chunkings against both
            for a, e in zip(q, r): torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
        sl = slice(rank * B, (rank + 1) * B)
        for _, dx, dy, _, _ in gather:
            torch.testing.assert_close(dx, gx[sl], rtol=0, atol=1e-12)
            torch.testing.assert_close(dy, gy[sl], rtol=0, atol=1e-12)
    for i in range(2, 4):                                        # the all-gather sigmoid's rows, both chunkings
        torch.testing.assert_close(sum(p[i][0] for p in per_rank) / W, loss, rtol=0, atol=1e-12)
        torch.testing.assert_close(sum(p[i][3] for p in per_rank), gt, rtol=0, atol=1e-12)
        torch.testing.assert_close(sum(p[i][4] for p in per_rank), gc, rtol=0, atol=1e-12)


class Tiny(nn.Module):
    "Two linear towers and a learnable scale/bias: enough to check DDP's gradient averaging."
    def __init__(self):
        super().__init__()
        self.img, self.txt, self.sb = nn.Linear(6, 4), nn.Linear(7, 4), ScaleBias(3., -2.)
    def forward(self, a, t):
        return (F.normalize(self.img(a), dim=-1), F.normalize(self.txt(t), dim=-1), *self.sb())


def _model_and_data(W):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return Tiny().double(), torch.randn(W * B, 6, generator=g, dtype=torch.float64), torch.randn(W * B, 7, generator=g, dtype=torch.float64)


def _ddp_grads():
    rank, W = dist.get_rank(), dist.get_world_size()
    model, a, t = _model_and_data(W)
    ddp, sl, out = DDP(model), slice(rank * B, (rank + 1) * B), []   # keep ddp alive: its reducer averages in backward
    for bidirectional in (False, True):
        model.zero_grad()
        ring_sigmoid_loss(*ddp(a[sl], t[sl]), bidirectional=bidirectional, chunk_size=CHUNK).backward()
        out.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return out


def test_ddp_gradients_equal_single_process_full_batch():
    W = 3
    model, a, t = _model_and_data(W)
    sigmoid_loss(*model(a, t)).backward()
    for per_direction in spawn(_ddp_grads, W):
        for grads in per_direction:
            for n, p in model.named_parameters(): torch.testing.assert_close(grads[n], p.grad, rtol=0, atol=1e-12, msg=n)


def _bad_inputs():
    rank = dist.get_rank()
    x = F.normalize(torch.randn(3 + rank, 4, dtype=torch.float64), dim=-1)
    msgs = []
    try: ring_sigmoid_loss(x, x, 1., 0.)              # uneven b: every rank must refuse, before any exchange
    except ValueError as e: msgs.append(str(e))
    x = x[:3].clone().requires_grad_()
    try: ((rank + 1) * ring_sigmoid_loss(x, x, 1., 0.)).backward()   # different gradient scale per rank
    except RuntimeError as e: msgs.append(str(e))
    return msgs


def test_uneven_batches_and_unequal_backward_are_refused():
    for rank, msgs in enumerate(spawn(_bad_inputs, 2)):
        assert len(msgs) == 2
        assert 'local batch sizes differ across ranks: b ranges from 3 to 4' in msgs[0] and f'this rank: {3 + rank}' in msgs[0]
        assert 'different gradients' in msgs[1]


def _lost_peer(mode):
    x = F.normalize(torch.randn(4, 3), dim=-1)
    if dist.get_rank() == 1:
        _check_same_shape(x, None, 5.)                 # pass the input check, then leave the ring
        if mode == 'hang': time.sleep(60)             # spawn terminates us once rank 0 has failed
        os._exit(0)
    ring_sigmoid_loss(x, x, 10., -10., timeout_s=3.)


@pytest.mark.parametrize('mode', ['exit', 'hang'])
def test_lost_peer_raises_naming_the_step(mode):
    t0 = time.perf_counter()
    with pytest.raises(Exception) as e: spawn(_lost_peer, 2, mode)
    assert time.perf_counter() - t0 < 45
    msg = str(e.value)
    assert 'RuntimeError: ring step 1/1' in msg and 'rank 1' in msg, msg
    if mode == 'hang': assert 'timed out after 3 s' in msg, msg


def _nonfinite_on_rank_1():
    "One `train_step` of two ranks where only rank 1's input holds a NaN: the error message and whether weights moved."
    from minisiglip.train import train_step
    rank, W = dist.get_rank(), dist.get_world_size()
    model, a, t = _model_and_data(W)
    a = a[rank * B:(rank + 1) * B].clone()
    if rank == 1: a[0, 0] = float('nan')
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    try: train_step(DDP(model), opt, ring_sigmoid_loss, a, t[rank * B:(rank + 1) * B], 5, 1e-2, 1., world=W)
    except FloatingPointError as e: msg = str(e)
    else: msg = None
    return msg, all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_nonfinite_on_one_rank_stops_every_rank():
    "A NaN on one rank must stop all ranks at the same step, before any update: a rank that went on would wait forever in the next collective."
    (msg0, same0), (msg1, same1) = spawn(_nonfinite_on_rank_1, 2)
    assert msg1 is not None and 'non-finite zimg at step 5' in msg1, msg1
    assert msg0 is not None and 'non-finite values on another rank (zimg there) at step 5' in msg0, msg0
    assert same0 and same1


def _ring_in_bf16():
    "One rank's float32 embeddings through the ring with dtype=bfloat16: its loss, gradients and bytes sent."
    rank, W = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(SEED)
    zi, zt = (F.normalize(torch.randn(W * B, D, generator=g), dim=-1)[rank * B:(rank + 1) * B]
              for _ in range(2))
    x, y, stats = zi.clone().requires_grad_(), zt.clone().requires_grad_(), CommStats()
    loss = ring_sigmoid_loss(x, y, SCALE, BIAS, dtype=torch.bfloat16, stats=stats)
    loss.backward()
    return loss.detach(), x.grad, y.grad, stats.bytes_sent


def test_ring_in_bf16_is_the_loss_of_the_rounded_embeddings():
    """Text blocks travel in bfloat16 (half the bytes of float32), gradients come home in float32, and the
    loss and gradients are the full-batch ones of the embeddings rounded to bfloat16."""
    W = 2
    res = spawn(_ring_in_bf16, W)
    g = torch.Generator().manual_seed(SEED)
    x, y = (F.normalize(torch.randn(W * B, D, generator=g), dim=-1).bfloat16().double().requires_grad_()
            for _ in range(2))
    ref = sigmoid_loss(x, y, SCALE, BIAS)
    (W * ref).backward()
    torch.testing.assert_close(sum(r[0].double() for r in res) / W, ref.detach(), rtol=1e-6, atol=0)
    for rank, (_, gx, gy, sent) in enumerate(res):
        rows = slice(rank * B, (rank + 1) * B)
        assert gx.dtype == gy.dtype == torch.float32
        torch.testing.assert_close(gx.double(), x.grad[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gy.double(), y.grad[rows], rtol=1e-5, atol=1e-6)
        assert sent == (W - 1) * B * D * (2 + 4)        # bfloat16 text blocks out, float32 gradients home


def _ddp_grads_of_a_gathered_loss():
    "Loss and DDP gradients of a one-batch loss (masked sigmoid, every negative kept) under gathered_loss."
    rank, W = dist.get_rank(), dist.get_world_size()
    model, a, t = _model_and_data(W)
    ddp, rows = DDP(model), slice(rank * B, (rank + 1) * B)
    loss = gathered_loss(functools.partial(masked_sigmoid_loss, keep_ratio=1.))(*ddp(a[rows], t[rows]))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gathered_loss_trains_the_full_batch_loss():
    """A custom loss under torchrun (05's train wraps it in gathered_loss): every rank's loss and DDP
    gradients are the single-process full-batch ones, not those of the rank's own pairs."""
    W = 2
    model, a, t = _model_and_data(W)
    ref = sigmoid_loss(*model(a, t))
    ref.backward()
    for loss, grads in spawn(_ddp_grads_of_a_gathered_loss, W):
        torch.testing.assert_close(loss, ref.detach(), rtol=0, atol=1e-12)
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=0, atol=1e-12, msg=n)


def test_run_distributed_reduces_its_figures_on_the_run_device(monkeypatch):
    """NCCL moves GPU tensors only, so the command's all_reduce of the slowest rank's figures must use the
    run's device (the first version used a CPU tensor and failed on GPUs after measuring). Meta stands in
    for a GPU."""
    seen = []

    class Reduced(Exception): pass

    def all_reduce(t, *args, **kwargs):
        seen.append(t.device)
        raise Reduced
    monkeypatch.setattr(md, 'pick_device', lambda name: torch.device('meta'))
    monkeypatch.setattr(md, 'init_distributed', lambda *args: (0, 2))
    monkeypatch.setattr(md, 'loss_step', lambda *args, **kwargs: dict(seconds=1., peak_bytes=2, bytes_sent=3))
    monkeypatch.setattr(md.dist, 'all_reduce', all_reduce)
    monkeypatch.setattr(md.dist, 'destroy_process_group', lambda: None)
    monkeypatch.setattr(md.torch, 'set_num_threads', lambda n: None)      # keep this process's threads
    args = md.add_distributed_args(argparse.ArgumentParser()).parse_args([])
    with pytest.raises(Reduced): md.run_distributed(args)
    assert seen == [torch.device('meta')]


def test_the_measuring_command_runs_under_torchrun(run_env):
    """02's command, as a user types it: torchrun abbreviates its own flags, so a script flag that is a prefix of one
    of them (`--d` of `--duplicate-stdout-filters`) is refused by torchrun before the script starts."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '-m', 'minisiglip.distributed',
           '--method', 'ring-bidir', '--batch', '16', '--dim', '8', '--reps', '1']
    res = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'world_size=2 b=16 d=8' in res.stdout, res.stdout
