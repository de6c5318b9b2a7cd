"""`minisiglip vlm ask` answering in sentences (sampling, --max-tokens, an empty answer said, unknown words named), and
a two-stage run with phrasings reporting caption F1 and accuracy on phrasings never trained (tiny sizes, few steps)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minisiglip.vlm_cli import EMPTY_ANSWER


@pytest.fixture(scope='module')
def env() -> dict:
    env = dict(os.environ, MPLBACKEND='Agg', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    env['PATH'] = str(Path(sys.executable).parent) + os.pathsep + env.get('PATH', '')
    return env


def minisiglip(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope='module')
def run(env, tmp_path_factory) -> tuple[Path, Path, str]:
    "A two-stage VLM run trained with phrasings (its stage 2 folder), an image file, and `vlm train`'s output."
    tmp = tmp_path_factory.mktemp('vlmtext')
    siglip, lm, vlm = tmp / 'siglip', tmp / 'lm', tmp / 'vlm'
    for args in (('train', '--preset', 'tiny_wide', '--steps', 2, '--batch-size', 16, '--n-train', 64,
                  '--eval-every', 0, '--out', siglip),
                 ('vlm', 'pretrain-lm', '--steps', 4, '--n-scenes', 50, '--batch-size', 8, '--warmup-steps', 2,
                  '--out', lm)):
        res = minisiglip(*args, env=env)
        assert res.returncode == 0, res.stderr
    res = minisiglip('vlm', 'train', '--siglip', siglip, '--lm', lm, '--stages', 2, '--phrasings',
                     '--caption-steps', 3, '--steps', 3, '--n-images', 40, '--batch-size', 8, '--warmup-steps', 2,
                     '--n-eval', 6, '--out', vlm, env=env)
    assert res.returncode == 0, res.stderr
    from minisiglip.data import ShapesDataset
    from torchvision.utils import save_image
    image = tmp / 'scene.png'
    save_image(ShapesDataset(1, 'val').images[0], image)
    return vlm / 'stage2', image, res.stdout


def test_two_stages_report_captions_and_phrasings(run):
    "`vlm train --stages 2 --phrasings --n-eval` prints caption F1 and exact match, and the phrasings' table."
    _, _, out = run
    assert 'captions: seen token F1 ' in out and '; held_out token F1 ' in out and 'exact match' in out, out
    assert '| family (seen) | template phrasings | train phrasings | held_out phrasings |' in out, out


def last_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stderr
    return res.stdout.rstrip('\n').split('\n')[-1]


def test_ask_in_sentences(run, env):
    """A caption-length answer within --max-tokens; a seeded sample repeats; words the run knows in another order are
    a question; unknown words and top-k without a temperature are one-line errors naming the problem."""
    vlm, image, _ = run
    from minisiglip.vlm_train import load_vlm
    _, tok, _ = load_vlm(vlm)
    said = last_line(minisiglip('vlm', 'ask', vlm, image, 'describe the image', '--max-tokens', 3, env=env))
    assert said == EMPTY_ANSWER or (1 <= len(said.split()) <= 3 and set(said.split()) <= set(tok.vocab[3:])), said
    sample = lambda seed: last_line(minisiglip('vlm', 'ask', vlm, image, 'describe the image', '--temperature', 2,
                                               '--top-k', 5, '--seed', seed, env=env))
    assert sample(3) == sample(3)
    said = last_line(minisiglip('vlm', 'ask', vlm, image, 'what is the colour of the circle', env=env))
    assert said and (said == EMPTY_ANSWER or set(said.split()) <= set(tok.vocab[3:])), said
    res = minisiglip('vlm', 'ask', vlm, image, 'what is the hue of the hexagon', env=env)
    assert res.returncode == 2 and "['hue', 'hexagon']" in res.stderr and 'Traceback' not in res.stderr, res.stderr
    res = minisiglip('vlm', 'ask', vlm, image, 'describe the image', '--top-k', 5, env=env)
    assert res.returncode == 2 and 'give a temperature > 0' in res.stderr, res.stderr


def test_empty_answer_is_said(run, env, tmp_path):
    "A VLM whose first word is always <eos> answers nothing: `vlm ask` says so instead of printing an empty line."
    import shutil
    import torch
    from safetensors.torch import save_model
    from minisiglip.checkpoint import latest_checkpoint
    from minisiglip.vlm_train import load_vlm
    vlm, image, _ = run
    mute = tmp_path / 'mute'
    shutil.copytree(latest_checkpoint(vlm), mute)
    model, tok, _ = load_vlm(mute)
    eos = tok.stoi['<eos>']
    with torch.no_grad():                         # the final norm outputs one vector, the <eos> embedding's direction:
        v = torch.zeros(model.lm.tok.embedding_dim); v[0] = 100.                  # with the tied head, <eos> wins
        model.lm.tok.weight[eos] = v
        model.lm.ln.weight.zero_(); model.lm.ln.bias.copy_(v)
    save_model(model, str(mute / 'model.safetensors'))
    assert last_line(minisiglip('vlm', 'ask', mute, image, 'how many objects are there', env=env)) == EMPTY_ANSWER
