"""Training under torchrun with 2 CPU ranks, exact resume across processes, and the train/eval/demo commands.

What a notebook cannot hold: separate processes launched the way users launch them (`torchrun ... minisiglip train`).
Runs are a handful of steps of the tiny preset on a small shapes set, so the whole file takes about a minute."""
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

import minisiglip.train as mt
from minisiglip.distributed import spawn
from minisiglip.losses import masked_sigmoid_loss

SCRIPT = shutil.which('minisiglip') or str(Path(sys.executable).parent / 'minisiglip')
TORCHRUN = shutil.which('torchrun') or str(Path(sys.executable).parent / 'torchrun')
SMALL = ['--steps', '4', '--batch-size', '16', '--n-train', '64', '--warmup-steps', '1', '--eval-every', '2',
         '--ckpt-every', '2', '--device', 'cpu']   # gloo on CPU ranks, also on a GPU machine
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}   # two ranks share two cores


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    "Run a command, failing the test with its output if it fails."
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def train_cmd(out: Path, *extra: str, world: int = 1) -> list[str]:
    "`minisiglip train` on the small setting, directly or under torchrun with `world` CPU ranks."
    args = ['train', *SMALL, '--out-dir', str(out), *extra]
    if world == 1: return [SCRIPT, *args]
    return [TORCHRUN, '--standalone', f'--nproc_per_node={world}', '--no-python', SCRIPT, *args]


def small_config(out_dir) -> 'mt.TrainConfig':
    "The TrainConfig of SMALL, for runs in spawned processes."
    return mt.TrainConfig(steps=4, batch_size=16, n_train=64, warmup_steps=1, eval_every=2, ckpt_every=2,
                          device='cpu', out_dir=str(out_dir))


def history(out: Path) -> dict:
    "The loss history saved in the newest checkpoint of a run folder."
    from minisiglip.checkpoint import latest_checkpoint, read_state
    return read_state(latest_checkpoint(out))['history']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "One single-process and one 2-rank run of the same configuration, shared by the tests below."
    root = tmp_path_factory.mktemp('runs')
    run(train_cmd(root / 'single'))
    run(train_cmd(root / 'ddp', world=2))
    return root


def test_two_ranks_match_one_process(runs):
    "2 ranks x 8 pairs with the ring loss + DDP follow the same loss curve as 1 process x 16 pairs with the plain loss."
    one, two = history(runs / 'single'), history(runs / 'ddp')
    assert len(one['loss']) == len(two['loss']) == 4
    assert one['loss'] == pytest.approx(two['loss'], abs=1e-4)
    assert one['loss'][-1] < one['loss'][0]


def test_two_nodes_on_localhost_match_one_process(runs, tmp_path):
    """The multi-node launch the README documents, with two torchrun launchers on this machine standing for two nodes
    (2 CPU ranks each, c10d rendezvous on localhost): the 4-rank run follows the 1-process loss curve."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    node = [TORCHRUN, '--nnodes', '2', '--nproc-per-node', '2', '--rdzv-backend', 'c10d',
            '--rdzv-endpoint', f'localhost:{port}', '--rdzv-id', 'two-nodes', '--no-python', SCRIPT,
            'train', *SMALL, '--out-dir', str(tmp_path / 'nodes')]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert all(p.returncode == 0 for p in nodes), outs
    four, one = history(tmp_path / 'nodes'), history(runs / 'single')
    assert four['loss'] == pytest.approx(one['loss'], abs=1e-4)


def test_two_rank_checkpoint_holds_both_rng_states(runs):
    from minisiglip.checkpoint import latest_checkpoint, read_state
    ckpt = latest_checkpoint(runs / 'ddp')
    assert ckpt.name == 'ckpt_0000004'
    assert sorted(p.name for p in ckpt.iterdir()) == ['model.safetensors', 'optimizer.safetensors', 'state.json']
    assert len(read_state(ckpt)['rng']) == 2


def test_two_rank_resume_is_exact(runs, tmp_path):
    "Stopped at step 2 and resumed under torchrun, the run reproduces the uninterrupted 2-rank losses exactly."
    run(train_cmd(tmp_path / 'r', '--stop-at', '2', world=2))
    assert len(history(tmp_path / 'r')['loss']) == 2
    run(train_cmd(tmp_path / 'r', '--resume', world=2))
    assert history(tmp_path / 'r')['loss'] == history(runs / 'ddp')['loss']


def test_resume_with_other_world_size_is_refused(runs, tmp_path):
    shutil.copytree(runs / 'ddp', tmp_path / 'r')
    p = subprocess.run(train_cmd(tmp_path / 'r', '--resume'), capture_output=True, text=True, env=ENV)
    assert p.returncode != 0 and 'RNG states' in p.stderr


def test_softmax_under_torchrun_matches_one_process(tmp_path):
    "The all-gather softmax loss on 2 ranks equals CLIP's loss on the whole batch in one process."
    run(train_cmd(tmp_path / 'one', '--loss', 'softmax'))
    run(train_cmd(tmp_path / 'two', '--loss', 'softmax', world=2))
    assert history(tmp_path / 'one')['loss'] == pytest.approx(history(tmp_path / 'two')['loss'], abs=1e-4)


def test_train_refuses_to_overwrite(runs):
    p = subprocess.run(train_cmd(runs / 'single'), capture_output=True, text=True, env=ENV)
    assert p.returncode != 0 and 'already holds' in p.stderr


def test_eval_command_writes_metrics(runs, tmp_path):
    out = tmp_path / 'eval.json'
    p = run([SCRIPT, 'eval', str(runs / 'single'), '--n', '60', '--json', str(out)])
    metrics = json.loads(out.read_text())
    assert metrics['step'] == 4
    assert {'colour', 'shape', 'count', 'held_out_pairs'} <= set(metrics['zero_shot'])
    assert {'i2t_r1', 't2i_r1', 'i2t_r10'} <= set(metrics['retrieval']) and metrics['retrieval']['n'] == 60
    assert 'zero-shot colour' in p.stdout and 'i2t R@1' in p.stdout and str(out) in p.stdout
    assert '"zero_shot"' not in p.stdout                      # the summary is printed; the JSON is in the file


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_demo_command_writes_run_folder(tmp_path, precision):
    """The demo's default precision, 'auto', is fp32 on one machine and bf16 on another: each is forced here, so that
    every machine runs both."""
    out = tmp_path / 'demo'
    p = run([SCRIPT, 'demo', '--out', str(out), '--steps', '3', '--warmup-steps', '1', '--batch-size', '16',
             '--n-eval', '60', '--precision', precision])
    assert {'metrics.json', 'loss.png', 'similarity.png', 'zero_shot.png', 'ckpt_0000003'} <= {q.name for q in out.iterdir()}
    metrics = json.loads((out / 'metrics.json').read_text())
    assert {'zero_shot', 'retrieval', 'wall_s'} <= set(metrics) and metrics['config']['precision'] == precision
    assert 'zero-shot' in p.stdout


def test_eval_default_json_goes_in_the_run_folder(runs):
    "Given a checkpoint folder, the metrics land beside it in the run folder, where a later save cannot delete them."
    ckpt = max((runs / 'single').glob('ckpt_*'))
    run([SCRIPT, 'eval', str(ckpt), '--n', '60'])
    assert json.loads((runs / 'single' / 'eval.json').read_text())['step'] == 4
    assert not (ckpt / 'eval.json').exists()


def test_compiled_towers_follow_the_eager_run_and_resume_without_compiling(runs, tmp_path):
    """`--compile` (torch.compile of the towers' trunks) gives the eager losses to float rounding; its checkpoints keep
    the eager parameter names, so the run resumes without compiling (compile is run-only). Compiling takes ~1 min."""
    run(train_cmd(tmp_path / 'c', '--compile', '--stop-at', '2'))
    compiled, eager = history(tmp_path / 'c')['loss'], history(runs / 'single')['loss'][:2]
    assert compiled == pytest.approx(eager, rel=1e-4)
    run(train_cmd(tmp_path / 'c', '--resume'))                      # eager from here, from the compiled checkpoint
    assert history(tmp_path / 'c')['loss'] == pytest.approx(history(runs / 'single')['loss'], rel=1e-4)


def _rank_0_fails(what: str, out_dir: str) -> str | None:
    "Two ranks train SMALL while rank 0's `what` (a function of minisiglip.train) raises: each rank's error."
    if dist.get_rank() == 0:
        def full_disk(*args, **kwargs): raise OSError('No space left on device')
        setattr(mt, what, full_disk)
    try: mt.train(small_config(out_dir))
    except Exception as e: return f'{type(e).__name__}: {e}'
    return None


@pytest.mark.parametrize('what, when', [('evaluate_loss', 'evaluation at step 2'),
                                        ('save_checkpoint', 'saving the checkpoint of step 2')])
def test_a_failure_on_rank_0_stops_every_rank_naming_it(tmp_path, what, when):
    """Rank 0 evaluates and saves alone; when that raises, the other rank stops too, at once, with the
    cause, instead of waiting in its next collective until the deadline (gloo notices a peer that left,
    NCCL does not)."""
    rank0, rank1 = spawn(_rank_0_fails, 2, what, str(tmp_path))
    assert rank0 == 'OSError: No space left on device'
    assert rank1 == f'RuntimeError: {when} failed on rank 0: OSError: No space left on device'


def _train_on_own_disk(root: str, resume: bool, stop_at: int | None):
    """Two ranks train SMALL, each in its own run folder (root/node<rank>), as on node-local disks: state
    or error."""
    cfg = small_config(Path(root) / f'node{dist.get_rank()}')
    try: return mt.train(cfg, resume=resume, stop_at=stop_at)[1]
    except Exception as e: return f'{type(e).__name__}: {e}'


def test_resume_with_node_local_disks(runs, tmp_path):
    """Rank 0 decides which checkpoint the run resumes from: a rank whose disk lacks it stops every rank,
    saying so (before, it started at step 0 while rank 0 resumed, and the run hung); with a copy on every
    node the run resumes and follows the uninterrupted 2-rank run."""
    spawn(_train_on_own_disk, 2, str(tmp_path), False, 2)             # rank 0 alone writes, to node0
    assert not (tmp_path / 'node1').exists()
    rank0, rank1 = spawn(_train_on_own_disk, 2, str(tmp_path), True, None)
    assert rank1.startswith('FileNotFoundError: rank 0 resumes from ckpt_0000002, which is not in'), rank1
    assert rank0.startswith('RuntimeError: finding ckpt_0000002 failed on rank 1: FileNotFoundError'), rank0
    shutil.copytree(tmp_path / 'node0', tmp_path / 'node1')
    for state in spawn(_train_on_own_disk, 2, str(tmp_path), True, None):
        assert state['history']['loss'] == pytest.approx(history(runs / 'ddp')['loss'], abs=1e-5)


def _masked_loss_on_two_ranks(out_dir: str) -> list[float]:
    """SMALL on two ranks with a custom loss_fn: the masked sigmoid loss keeping every negative (= sigmoid
    loss)."""
    return mt.train(small_config(out_dir), loss_fn=functools.partial(masked_sigmoid_loss, keep_ratio=1.))[1][
        'history']['loss']


def test_custom_loss_under_two_ranks_is_the_full_batch_loss(runs, tmp_path):
    "A custom loss_fn sees the whole batch under torchrun: the 2-rank run follows the 1-process sigmoid run."
    for losses in spawn(_masked_loss_on_two_ranks, 2, str(tmp_path)):
        assert losses == pytest.approx(history(runs / 'single')['loss'], abs=1e-4)


def test_siglip2_recipe_resume_is_exact(tmp_path):
    """`minisiglip train --silc --tips --locca`, stopped after SILC/TIPS switched on and resumed, reproduces the
    uninterrupted run: its sigmoid, SILC, TIPS and LocCa losses, and the teacher, mask token and decoder its
    checkpoint holds."""
    from minisiglip.checkpoint import latest_checkpoint, read_tensors
    parts = ['--silc', '--tips', '--locca', '--ssl-start', '0.5', '--ssl-local-views', '2']
    run(train_cmd(tmp_path / 'whole', *parts))
    run(train_cmd(tmp_path / 'r', *parts, '--stop-at', '3'))
    run(train_cmd(tmp_path / 'r', *parts, '--resume'))
    whole, resumed = history(tmp_path / 'whole'), history(tmp_path / 'r')
    for k in ('loss', 'silc', 'tips', 'locca'): assert resumed[k] == whole[k], k
    assert whole['silc'][:2] == [0., 0.] and min(whole['silc'][2:]) > 0        # on from step round(0.5 * 4) = 2
    saved = [read_tensors(latest_checkpoint(tmp_path / r) / 'recipe.safetensors') for r in ('whole', 'r')]
    assert saved[0].keys() == saved[1].keys() and any(k.startswith('parts.locca.decoder.') for k in saved[0])
    for k, v in saved[0].items(): assert v.equal(saved[1][k]), k
