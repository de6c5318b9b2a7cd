"""Your pairs as WebDataset shards, through the real commands: `minisiglip shards`, then `train` and `eval` on the
shards, against the folder they came from; `--cache`; damaged shards; the split across two torchrun ranks."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torchvision.utils import save_image

from minisiglip.data import ShapesDataset
from minisiglip.checkpoint import latest_checkpoint, read_state

SMALL = ['--batch-size', '16', '--steps', '4', '--warmup-steps', '1', '--eval-every', '2', '--ckpt-every', '2',
         '--preset', 'tiny', '--device', 'cpu']
TORCHRUN = shutil.which('torchrun') or str(Path(sys.executable).parent / 'torchrun')
SHARDS = 'shards/{000000..000002}.tar'    # 40 pairs at 16 a shard


def minisiglip(*args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def history(run: Path) -> dict:
    return read_state(latest_checkpoint(run))['history']


@pytest.fixture(scope='module')
def root(tmp_path_factory) -> Path:
    "A folder `pngs` of 40 scene PNGs with same-name .txt captions, and nothing else yet."
    root = tmp_path_factory.mktemp('shards')
    (root / 'pngs').mkdir()
    for i, (image, caption) in enumerate(ShapesDataset(40, 'val', seed=5, image_size=48)):
        save_image(image, root / 'pngs' / f'{i:02d}.png')
        (root / 'pngs' / f'{i:02d}.txt').write_text(caption)
    return root


@pytest.fixture(scope='module')
def written(root) -> Path:
    "`minisiglip shards pngs shards --per-shard 16`, run as a user would (relative paths), its output checked."
    env = {**__import__('os').environ, 'OMP_NUM_THREADS': '1'}
    env['PATH'] = str(Path(sys.executable).parent) + ':' + env['PATH']
    res = minisiglip('shards', 'pngs', 'shards', '--per-shard', '16', env=env, cwd=root)
    assert res.returncode == 0, res.stderr
    assert f"wrote 40 pairs to 3 shards; train on them with --data '{SHARDS}'" in res.stdout, res.stdout
    res = minisiglip('shards', 'pngs', 'shards', env=env, cwd=root)
    assert res.returncode == 2 and 'already holds .tar files' in res.stderr, res.stderr
    return root


@pytest.fixture(scope='module')
def runs(written) -> Path:
    "4 steps from the folder, from the shards and from the shards' decoded cache (`--cache`), in `written`."
    env = {**__import__('os').environ, 'OMP_NUM_THREADS': '1'}
    for name, flags in RUNS.items():
        res = subprocess.run(['minisiglip', 'train', *flags, *SMALL, '--workers', '1', '--out', f'run_{name}'],
                             capture_output=True, text=True, env=env, cwd=written, timeout=600)
        assert res.returncode == 0, res.stderr
    return written


RUNS = {'folder': ['--data', 'pngs'], 'shards': ['--data', SHARDS], 'cache': ['--data', SHARDS, '--cache']}


def test_shards_train_like_the_folder(runs, run_env):
    "The same 40 pairs from the folder, from the shards and from the shards' decoded cache: the same loss curve, "
    "bit for bit (same split, same tokenizer, same seeded batches, same pixels); eval reads the shards too."
    curves = [history(runs / f'run_{name}') for name in RUNS]
    assert curves[0] == curves[1] == curves[2] and len(curves[0]['loss']) == 4
    assert len(list((runs / 'run_cache' / 'decoded').glob('*px.npy'))) == 1
    res = minisiglip('eval', 'run_folder', '--data', SHARDS, '--n', '8', env=run_env, cwd=runs)
    assert res.returncode == 0 and 'evaluating on shards/{000000..000002}.tar: 40 pairs' in res.stdout, res.stderr


@pytest.mark.parametrize('cut', ['inside a member', 'between samples'])
def test_a_truncated_shard_is_named(written, run_env, tmp_path, cut):
    "A shard cut short, inside an image or exactly at a sample's end (where tarfile would see a clean end), stops "
    "training before the first step with one line naming the shard: nothing is silently dropped."
    shutil.copytree(written / 'shards', tmp_path / 'shards')
    shard = tmp_path / 'shards' / '000001.tar'
    data = shard.read_bytes()
    import tarfile
    with tarfile.open(shard) as tar: members = tar.getmembers()
    end = members[5].offset_data + 100 if cut == 'inside a member' else members[7].offset_data + 512 * (
        (members[7].size + 511) // 512)
    shard.write_bytes(data[:end])
    res = minisiglip('train', '--data', SHARDS, *SMALL, '--out', 'run', env=run_env, cwd=tmp_path)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
    assert last.startswith('minisiglip train: error: shard shards/000001.tar is truncated'), last


def test_a_missing_shard_and_a_bad_image_in_a_shard(written, run_env, tmp_path):
    "A range naming a shard that is not there is refused before reading; an image in a shard that does not decode "
    "is named by shard and key, and with --skip-bad is counted."
    res = minisiglip('train', '--data', 'shards/{000000..000003}.tar', *SMALL, '--out', tmp_path / 'r', env=run_env,
                     cwd=written)
    assert res.returncode == 2 and 'shard not found: shards/000003.tar (1 of the 4' in res.stderr, res.stderr
    shutil.copytree(written / 'pngs', tmp_path / 'pngs')
    for png in (tmp_path / 'pngs').glob('*.png'): png.write_bytes(png.read_bytes()[:100])   # header intact
    res = minisiglip('shards', 'pngs', 'bad', '--per-shard', '16', env=run_env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = minisiglip('train', '--data', 'bad/{000000..000002}.tar', *SMALL, '--out', 'r', env=run_env, cwd=tmp_path)
    assert res.returncode == 2 and 'cannot read image bad/00000' in res.stderr and '.png' in res.stderr, res.stderr


def test_two_ranks_split_the_shards(runs, tmp_path):
    "Under torchrun with 2 gloo ranks each rank decodes its half of every batch from the shards, and the run follows "
    "the single process's curve (ring loss vs plain loss: equal up to float rounding)."
    env = {**__import__('os').environ, 'OMP_NUM_THREADS': '1'}
    script = shutil.which('minisiglip') or str(Path(sys.executable).parent / 'minisiglip')
    cmd = [TORCHRUN, '--standalone', '--nproc_per_node=2', '--no-python', script, 'train', '--data', SHARDS, *SMALL,
           '--workers', '1', '--out', str(tmp_path / 'two')]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=runs, timeout=600)
    assert res.returncode == 0, res.stderr
    assert history(tmp_path / 'two')['loss'] == pytest.approx(history(runs / 'run_shards')['loss'], abs=1e-4)


def test_augmented_runs_resume_exactly(runs, run_env, tmp_path):
    "--augment draws each image's crop and flip from (seed, step, slot): 4 steps in 2 workers equal 2 steps in this "
    "process resumed for 2 in 2 workers, bit for bit, and differ from the unaugmented run."
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    flags = ['--data', SHARDS, *SMALL, '--augment']
    for extra, out in ((['--workers', '2'], straight), (['--workers', '0', '--stop-at', '2'], split),
                       (['--workers', '2', '--resume'], split)):
        res = minisiglip('train', *flags, *extra, '--out', out, env=run_env, cwd=runs)
        assert res.returncode == 0, res.stderr
    a, b, plain = history(straight), history(split), history(runs / 'run_shards')
    assert a == b and a['loss'] != plain['loss']


def test_a_decode_failure_on_one_rank_is_named_on_every_rank(written, tmp_path):
    "An image that only rank 1 decodes, at step 1, stops both ranks well before --timeout, and each rank's last "
    "line names the file: rank 1 its own error, rank 0 (whose collective failed when rank 1 left) rank 1's."
    from minisiglip.data import CaptionFileDataset, split_indices
    from minisiglip.train import batch_indices
    shutil.copytree(written / 'pngs', tmp_path / 'pngs')
    files = CaptionFileDataset(tmp_path / 'pngs').files
    train_idx, _ = split_indices(len(files), 0.1, seed=0)
    victim = files[train_idx[batch_indices(0, 1, len(train_idx), 16, rank=1, world=2, drop_last=True)[0]]]
    victim.write_bytes(victim.read_bytes()[:100])
    env = {**__import__('os').environ, 'OMP_NUM_THREADS': '1'}
    env['PATH'] = str(Path(sys.executable).parent) + ':' + env['PATH']
    assert minisiglip('shards', 'pngs', 'shards', '--per-shard', '16', env=env, cwd=tmp_path).returncode == 0
    i = files.index(victim)
    member = f'shards/{i // 16:06d}.tar/{i:09d}.png'                # 16 pairs a shard
    script = shutil.which('minisiglip') or str(Path(sys.executable).parent / 'minisiglip')
    cmd = [TORCHRUN, '--standalone', '--nproc_per_node=2', '--no-python', script, 'train', '--data', SHARDS, *SMALL,
           '--workers', '1', '--timeout', '900', '--out', 'run']
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)   # < --timeout
    errors = [line for line in res.stderr.splitlines() if 'minisiglip train: error:' in line]
    assert res.returncode != 0 and len(errors) == 2, res.stderr
    assert all(member in line for line in errors), errors
    assert any('rank 1 failed: ValueError: cannot read image' in line for line in errors), errors
