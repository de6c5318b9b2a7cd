"Your images streamed through `DataLoader` workers, through the real `minisiglip train`: exact resume, bad files."
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from torchvision.utils import save_image

from minisiglip.data import CaptionFileDataset, ShapesDataset, split_indices
from minisiglip.train import batch_indices
from minisiglip.checkpoint import latest_checkpoint, read_state

SMALL = ['--batch-size', '16', '--steps', '4', '--warmup-steps', '1', '--eval-every', '2', '--ckpt-every', '2',
         '--preset', 'tiny', '--device', 'cpu']


def minisiglip(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def state(run: Path) -> dict:
    return read_state(latest_checkpoint(run))


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    "40 scene PNGs with same-name .txt captions."
    root = tmp_path_factory.mktemp('pngs')
    for i, (image, caption) in enumerate(ShapesDataset(40, 'val', seed=5, image_size=48)):
        save_image(image, root / f'{i:02d}.png')
        (root / f'{i:02d}.txt').write_text(caption)
    return root


def test_resume_from_streamed_files_is_exact(folder, run_env, tmp_path):
    "4 steps decoded by 2 workers equal 2 steps decoded in-process then 2 resumed in 2 workers, bit for bit."
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    res = minisiglip('train', '--data', folder, *SMALL, '--workers', '2', '--out', straight, env=run_env)
    assert res.returncode == 0, res.stderr
    assert 'images/s' in res.stdout and 'of step time waiting for data' in res.stdout, res.stdout
    res = minisiglip('train', '--data', folder, *SMALL, '--workers', '0', '--stop-at', '2', '--out', split, env=run_env)
    assert res.returncode == 0, res.stderr
    res = minisiglip('train', '--data', folder, *SMALL, '--workers', '2', '--resume', '--out', split, env=run_env)
    assert res.returncode == 0, res.stderr
    a, b = state(straight), state(split)
    assert a['history'] == b['history'] and a['step'] == b['step'] == 4
    assert set(a['throughput']) == {'images_per_s', 'data_wait'} and 0 <= a['throughput']['data_wait'] <= 1


def test_an_image_that_fails_to_decode_in_a_worker(folder, run_env, tmp_path):
    "A PNG cut short (its header intact, so indexing keeps it) in step 0's batch stops the run naming it, in one "
    "line; with --skip-bad it is left out, counted and reported."
    data = tmp_path / 'data'
    shutil.copytree(folder, data)
    files = CaptionFileDataset(data).files
    train_idx, _ = split_indices(len(files), 0.1, seed=0)
    victim = files[train_idx[batch_indices(0, 0, len(train_idx), 16, drop_last=True)[0]]]
    victim.write_bytes(victim.read_bytes()[:100])
    res = minisiglip('train', '--data', data, *SMALL, '--workers', '2', '--out', tmp_path / 'stop', env=run_env)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
    assert last.startswith('minisiglip train: error:') and victim.name in last and '--skip-bad' in last, last
    res = minisiglip('train', '--data', data, *SMALL, '--workers', '2', '--skip-bad', '--out', tmp_path / 'skip',
                     env=run_env)
    assert res.returncode == 0, res.stderr
    undecodable = state(tmp_path / 'skip')['undecodable']      # once per batch that held it
    assert len(undecodable) >= 1 and all(victim.name in r for r in undecodable)
    assert f'{len(undecodable)} images (1 files) could not be decoded' in res.stdout, res.stdout
    assert victim.name in res.stdout
