"`minisiglip vlm pretrain-lm` and `vlm train --lm ... --stages 2`, as a user runs them (tiny sizes, a few steps)."
import subprocess

from minisiglip.checkpoint import latest_checkpoint


def minisiglip(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_pretrain_lm_then_two_stages_then_ask(run_env, tmp_path):
    """A text-pretrained LM, then LLaVA's two stages on it with a LoRA LM: each stage's checkpoint kept, stage 2
    started from stage 1, the counts of trained parameters printed per stage; the stage-2 VLM answers."""
    siglip, lm, vlm = tmp_path / 'siglip', tmp_path / 'lm', tmp_path / 'vlm'
    res = minisiglip('train', '--preset', 'tiny_wide', '--steps', 2, '--batch-size', 16, '--n-train', 64,
                     '--eval-every', 0, '--out', siglip, env=run_env)
    assert res.returncode == 0, res.stderr
    res = minisiglip('vlm', 'pretrain-lm', '--steps', 4, '--n-scenes', 50, '--batch-size', 8, '--warmup-steps', 2,
                     '--out', lm, env=run_env)
    assert res.returncode == 0, res.stderr
    assert 'tokens of text' in res.stdout and latest_checkpoint(lm) is not None
    res = minisiglip('vlm', 'train', '--siglip', siglip, '--lm', lm, '--lm-mode', 'lora', '--stages', 2,
                     '--caption-steps', 3, '--steps', 3, '--n-images', 40, '--batch-size', 8, '--warmup-steps', 2,
                     '--out', vlm, env=run_env)
    assert res.returncode == 0, res.stderr
    counts = [line for line in res.stdout.splitlines() if 'trained parameters' in line]
    assert len(counts) == 2 and 'vision 0, ' in counts[0] and counts[0].endswith('lm 0'), counts   # stage 1
    assert '(caption; tower frozen, LM frozen)' in counts[0] and '(vqa; tower frozen, LM lora)' in counts[1], counts
    assert f"checkpoint in {vlm / 'stage2'}" in res.stdout
    from minisiglip.vlm_train import load_vlm
    _, tok, state = load_vlm(vlm / 'stage2')
    _, _, state1 = load_vlm(vlm / 'stage1')
    assert state['config']['init'] == str(vlm / 'stage1') and state1['config']['lm'] == str(lm)
    assert state1['config']['task'] == 'caption' and 'describe' in tok.vocab
    from minisiglip.data import ShapesDataset
    from torchvision.utils import save_image
    image = tmp_path / 'scene.png'
    save_image(ShapesDataset(1, 'val').images[0], image)
    res = minisiglip('vlm', 'ask', vlm / 'stage2', image, 'how many objects are there', env=run_env)
    assert res.returncode == 0, res.stderr
    from minisiglip.vlm_cli import EMPTY_ANSWER
    said = res.stdout.rstrip('\n').split('\n')[-1]
    assert said == EMPTY_ANSWER or set(said.split()) <= set(tok.vocab[3:]), res.stdout   # untrained: any words


def test_bad_lm_and_stage_input_is_one_line(run_env, tmp_path):
    "Two stages without an LM, and an LM folder that holds none: one line each, exit status 2, no traceback."
    for args, message in ((['--stages', 2], 'two stages need a text-pretrained LM'),
                          (['--lm', tmp_path / 'nothing'], 'minisiglip vlm pretrain-lm --out')):
        res = minisiglip('vlm', 'train', '--siglip', 'runs/demo', '--steps', 1, '--out', tmp_path / 'v', *args,
                         env=run_env)
        assert res.returncode == 2 and message in res.stderr and 'Traceback' not in res.stderr, res.stderr
