"Your own image–caption files through the real `minisiglip` command: columns, bad pairs, validation split, errors."
import json
import subprocess
from pathlib import Path

import pytest
from torchvision.utils import save_image

from minisiglip.data import ShapesDataset

SMALL = ['--batch-size', '16', '--steps', '2', '--eval-every', '0', '--preset', 'tiny']


def minisiglip(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def one_line_error(res: subprocess.CompletedProcess, status: int, *fragments: str) -> None:
    "The command failed with `status` and said so in one last line holding every fragment, without a traceback."
    assert res.returncode == status, (res.returncode, res.stderr)
    *before, line = res.stderr.strip().splitlines()
    assert line.startswith('minisiglip ') and all('it/s]' in b for b in before), res.stderr   # a progress bar at most
    assert 'Traceback' not in res.stderr and all(f in line for f in fragments), (fragments, line)


@pytest.fixture(scope='module')
def pairs(tmp_path_factory) -> Path:
    "40 scene PNGs under images/, listed in pairs.csv with the most common header, `image,caption`."
    root = tmp_path_factory.mktemp('own')
    (root / 'images').mkdir()
    rows = ['image,caption']
    for i, (image, caption) in enumerate(ShapesDataset(40, 'val', seed=5, image_size=48)):
        save_image(image, root / 'images' / f'{i}.png')
        rows.append(f'images/{i}.png,"{caption}"')
    (root / 'pairs.csv').write_text('\n'.join(rows) + '\n')
    return root


def test_usual_columns_split_and_eval(pairs, run_env, tmp_path):
    "`image,caption` is read without flags and reported; 10% held out, recorded, and used by eval."
    res = minisiglip('train', '--data', pairs / 'pairs.csv', *SMALL, '--out', tmp_path / 'run', env=run_env)
    assert res.returncode == 0, res.stderr
    assert "40 pairs (image column 'image', caption column 'caption'); 0 skipped" in res.stdout, res.stdout
    assert '36 for training, 4 for validation' in res.stdout, res.stdout
    state = json.loads((tmp_path / 'run' / 'ckpt_0000002' / 'state.json').read_text())
    assert (state['data']['train'], state['data']['val'], state['config']['val_fraction']) == (36, 4, 0.1)
    res = minisiglip('eval', tmp_path / 'run', env=run_env)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / 'run' / 'eval.json').read_text())
    assert metrics['retrieval']['n'] == 4 and metrics['data'].startswith('the 4 validation pairs of')
    assert '| i2t R@1 among 4 (same content) |' in res.stdout
    res = minisiglip('eval', tmp_path / 'run', '--data', pairs / 'pairs.csv', '--json', tmp_path / 'all.json',
                     env=run_env)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / 'all.json').read_text())['retrieval']['n'] == 40
    # the file changed under the run: its validation pairs could now be training pairs, so eval and resume refuse
    csv = pairs / 'pairs.csv'
    original = csv.read_text()
    try:
        csv.write_text('\n'.join(original.splitlines()[:-1]) + '\n')
        one_line_error(minisiglip('eval', tmp_path / 'run', env=run_env), 2, 'differ from those',
                       '40 pairs then, 39 now')
    finally: csv.write_text(original)


def test_other_column_names_and_bad_pairs(pairs, run_env, tmp_path):
    "Unusual headers need --image-col/--caption-col; an unreadable image stops the run unless --skip-bad (reported)."
    odd = tmp_path / 'odd.tsv'
    lines = (pairs / 'pairs.csv').read_text().splitlines()[1:]
    odd.write_text('picture\twords\n' + ''.join(f"{pairs / l.split(',')[0]}\t{l.split(',', 1)[1].strip(chr(34))}\n"
                                                  for l in lines) + f'{pairs}/missing.png\ta lost picture\n')
    out = ['--out', tmp_path / 'run']
    one_line_error(minisiglip('train', '--data', odd, *SMALL, *out, env=run_env), 2, 'has no image column',
                   "['picture', 'words']", '--image-col')
    cols = ['--image-col', 'picture', '--caption-col', 'words']
    one_line_error(minisiglip('train', '--data', odd, *cols, *SMALL, *out, env=run_env), 2,
                   'image file not found', 'missing.png', '--skip-bad')
    res = minisiglip('train', '--data', odd, *cols, '--skip-bad', *SMALL, *out, env=run_env)
    assert res.returncode == 0, res.stderr
    assert "41 pairs" not in res.stdout and '40 pairs' in res.stdout and '1 skipped: image file not found' in res.stdout


def test_errors_are_one_line(pairs, run_env, tmp_path):
    "Each bad input of the issue, through the real command: one line on stderr, status 2; --debug shows the traceback."
    one_line_error(minisiglip('eval', tmp_path / 'no_run', env=run_env), 2, 'no checkpoint', 'no_run')
    one_line_error(minisiglip('train', '--data', tmp_path / 'nope.csv', *SMALL, env=run_env), 2,
                   'existing caption file or folder', 'nope.csv')
    one_line_error(minisiglip('train', '--data', pairs / 'pairs.csv', *SMALL[2:], '--batch-size', '64',
                              '--out', tmp_path / 'big', env=run_env), 2, 'batch_size 64 exceeds the 36 training pairs')
    one_line_error(minisiglip('train', '--val-fraction', '1.5', env=run_env), 2, 'val_fraction must be in [0, 1)')
    res = minisiglip('eval', tmp_path / 'no_run', '--debug', env=run_env)
    assert res.returncode != 0 and 'Traceback' in res.stderr and 'no checkpoint' in res.stderr
    # a failure while running (not bad input) is status 1, with its type
    one_line_error(minisiglip('train', '--init-bias', '3e38', '--n-train', '64', *SMALL, '--out', tmp_path / 'inf',
                              env=run_env), 1, 'FloatingPointError', 'non-finite loss at step 0')


def test_damaged_checkpoint(pairs, run_env, tmp_path):
    "A truncated model.safetensors is named with its cause, and --resume points at the older checkpoint."
    run = tmp_path / 'run'
    res = minisiglip('train', '--data', pairs / 'pairs.csv', *SMALL[:2], '--steps', '4', '--ckpt-every', '2',
                     '--eval-every', '0', '--out', run, env=run_env)
    assert res.returncode == 0, res.stderr
    weights = run / 'ckpt_0000004' / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:4096])
    one_line_error(minisiglip('eval', run, env=run_env), 2, f'cannot read {weights}: truncated')
    one_line_error(minisiglip('train', '--data', pairs / 'pairs.csv', *SMALL[:2], '--steps', '4', '--ckpt-every', '2',
                              '--eval-every', '0', '--out', run, '--resume', env=run_env), 2,
                   'truncated', 'the older checkpoint ckpt_0000002 exists: remove ckpt_0000004 to resume from it')
    weights.write_text('{"not": "safetensors"}')
    one_line_error(minisiglip('eval', run, env=run_env), 2, 'not a safetensors file')
