"The `minisiglip` console script, as a user runs it."
import subprocess

from minisiglip.cli import COMMANDS


def minisiglip(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *args], capture_output=True, text=True, env=env, timeout=600)


def test_help_lists_every_subcommand(run_env):
    res = minisiglip('--help', env=run_env)
    assert res.returncode == 0, res.stderr
    for name in COMMANDS: assert name in res.stdout


def test_unknown_subcommand_is_a_usage_error(run_env):
    res = minisiglip('no-such-command', env=run_env)
    assert res.returncode == 2 and 'invalid choice' in res.stderr


def test_losses_prints_a_table(run_env):
    res = minisiglip('losses', '--n', '64', '--d', '16', env=run_env)
    assert res.returncode == 0, res.stderr
    assert 'sigmoid' in res.stdout and 'softmax' in res.stdout


def test_vlm_train_and_ask(run_env, tmp_path):
    "`vlm train` on a 2-step SigLIP run, then `vlm ask`: the answer is the last line; bad input is one line, exit 2."
    siglip, vlm = tmp_path / 'siglip', tmp_path / 'vlm'
    res = minisiglip('train', '--preset', 'tiny_wide', '--steps', '2', '--batch-size', '16', '--n-train', '64',
                     '--eval-every', '0', '--out', str(siglip), env=run_env)
    assert res.returncode == 0, res.stderr
    res = minisiglip('vlm', 'train', '--siglip', str(siglip), '--steps', '3', '--n-images', '50', '--batch-size', '16',
                     '--connector', 'perceiver', '--mp-latents', '4', '--mode', 'lora', '--out', str(vlm), env=run_env)
    assert res.returncode == 0, res.stderr
    assert 'checkpoint in' in res.stdout
    from minisiglip.data import ShapesDataset
    from torchvision.utils import save_image
    image = tmp_path / 'scene.png'
    save_image(ShapesDataset(1, 'val').images[0], image)          # a PNG file, as a user would pass
    res = minisiglip('vlm', 'ask', str(vlm), str(image), 'How many objects are there?', env=run_env)
    assert res.returncode == 0, res.stderr
    from minisiglip.vqa import vqa_tokenizer
    answer = res.stdout.rstrip('\n').split('\n')[-1]
    assert set(answer.split()) <= set(vqa_tokenizer().vocab[3:]), answer    # words of the vocabulary (untrained: any)
    for args, message in (([str(vlm), str(tmp_path / 'missing.png'), 'how many objects are there'], 'image file not found'),
                          ([str(vlm), str(image), 'what colour is the hexagon'], "['hexagon']"),
                          ([str(tmp_path / 'no_run'), str(image), 'how many objects are there'], 'no VLM checkpoint')):
        res = minisiglip('vlm', 'ask', *args, env=run_env)
        assert res.returncode == 2 and message in res.stderr and 'Traceback' not in res.stderr, res.stderr


def test_vlm_demo_without_siglip_run_says_how(run_env, tmp_path):
    res = minisiglip('vlm', 'demo', '--siglip', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'v'), env=run_env)
    assert res.returncode == 2 and 'minisiglip demo --out' in res.stderr and 'Traceback' not in res.stderr
