"The `minisiglip` console script, as a user runs it."
import subprocess
import pytest
import torch

from minisiglip.cli import COMMANDS, build_parser, undocumented_flags


def minisiglip(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(['minisiglip', *args], capture_output=True, text=True, env=env, timeout=600)


def two_step_run(out, env) -> None:
    "A 2-step tiny SigLIP run in `out`: the tower and checkpoint that `vlm` and `eval` commands need."
    res = minisiglip('train', '--preset', 'tiny_wide', '--steps', '2', '--batch-size', '16', '--n-train', '64',
                     '--eval-every', '0', '--out', str(out), env=env)
    assert res.returncode == 0, res.stderr


def test_help_lists_every_subcommand(run_env):
    res = minisiglip('--help', env=run_env)
    assert res.returncode == 0, res.stderr
    for name in COMMANDS: assert name in res.stdout


@pytest.mark.parametrize('command', list(COMMANDS))
def test_every_flag_explains_itself(command):
    "Each flag and argument of every subcommand (and sub-subcommand) has a help line, not just a default."
    assert undocumented_flags(build_parser(command)) == []


def test_train_help_reads_the_config_comments(run_env):
    res = minisiglip('train', '--help', env=run_env)
    assert res.returncode == 0, res.stderr
    help = ' '.join(res.stdout.split())
    assert "--workers WORKERS DataLoader processes decoding your images" in help
    assert "--preset {tiny,tiny_wide,micro,small}" in help and 'side of the (square) images in pixels' in help


def test_unknown_subcommand_is_a_usage_error(run_env):
    res = minisiglip('no-such-command', env=run_env)
    assert res.returncode == 2 and 'invalid choice' in res.stderr


def test_losses_prints_a_table(run_env):
    res = minisiglip('losses', '--n', '64', '--d', '16', env=run_env)
    assert res.returncode == 0, res.stderr
    assert 'sigmoid' in res.stdout and 'softmax' in res.stdout


def test_vlm_train_and_ask(run_env, tmp_path):
    """`vlm train` (one ablation arm in bf16, evaluated) on a 2-step SigLIP run, then `vlm ask`: the answer is the
    last line; bad input is one line, exit 2."""
    siglip, vlm = tmp_path / 'siglip', tmp_path / 'vlm'
    two_step_run(siglip, run_env)
    res = minisiglip('vlm', 'train', '--siglip', str(siglip), '--steps', '3', '--n-images', '50', '--batch-size', '16',
                     '--connector', 'perceiver', '--latents', '4', '--mode', 'lora', '--out', str(vlm), '--n-eval', '20',
                     '--precision', 'bf16', env=run_env)
    assert res.returncode == 0, res.stderr
    assert 'checkpoint in' in res.stdout
    assert '| family (seen) | VLM |' in res.stdout and '| family (held_out) | VLM |' in res.stdout   # one arm, evaluated
    from minisiglip.vlm_train import load_vlm
    model, _, state = load_vlm(vlm)
    assert model.n_visual == 4                                    # --latents is the perceiver's number of latents
    assert state['config']['precision'] == 'bf16' and all(p.dtype == torch.float32 for p in model.parameters())
    from minisiglip.data import ShapesDataset
    from torchvision.utils import save_image
    image = tmp_path / 'scene.png'
    save_image(ShapesDataset(1, 'val').images[0], image)          # a PNG file, as a user would pass
    res = minisiglip('vlm', 'ask', str(vlm), str(image), 'How many objects are there?', env=run_env)
    assert res.returncode == 0, res.stderr
    from minisiglip.vqa import vqa_tokenizer
    from minisiglip.vlm_cli import EMPTY_ANSWER
    answer = res.stdout.rstrip('\n').split('\n')[-1]
    assert answer == EMPTY_ANSWER or set(answer.split()) <= set(vqa_tokenizer().vocab[3:]), answer   # untrained: any
    for args, message in (([str(vlm), str(tmp_path / 'missing.png'), 'how many objects are there'], 'image file not found'),
                          ([str(vlm), str(image), 'what colour is the hexagon'], "['hexagon']"),
                          ([str(tmp_path / 'no_run'), str(image), 'how many objects are there'], 'no VLM checkpoint')):
        res = minisiglip('vlm', 'ask', *args, env=run_env)
        assert res.returncode == 2 and message in res.stderr and 'Traceback' not in res.stderr, res.stderr


def test_vlm_demo_without_siglip_run_says_how(run_env, tmp_path):
    res = minisiglip('vlm', 'demo', '--siglip', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'v'), env=run_env)
    assert res.returncode == 2 and 'minisiglip demo --out' in res.stderr and 'Traceback' not in res.stderr


def test_vlm_demo_two_stages_pretrains_lm_once(run_env, tmp_path):
    "`vlm demo --stages 2` without --lm pretrains one into OUT/lm, timed apart; with --lm it pretrains nothing."
    import json
    siglip = tmp_path / 'siglip'
    two_step_run(siglip, run_env)
    tiny = ['--siglip', str(siglip), '--stages', '2', '--steps', '4', '--caption-steps', '2', '--n-images', '64',
            '--n-eval', '12', '--captions', '0.5', '--precision', 'fp32', '--schedule', 'cosine']
    res = minisiglip('vlm', 'demo', *tiny, '--lm-steps', '3', '--other-program', '4', '--out', str(tmp_path / 'a'),
                     env=run_env)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / 'a' / 'metrics.json').read_text())
    assert m['lm_pretrain_s'] > 0 and m['lm'] == str(tmp_path / 'a' / 'lm') and 'LM pretrained on text' in res.stdout
    for stage in ('stage1', 'stage2'): assert list((tmp_path / 'a' / stage).glob('ckpt_*')), stage
    assert (m['stages'], m['stage1_steps'], m['steps']) == (2, 2, 2) and set(m['captions']) == {'seen', 'held_out'}
    assert set(m['other_program']['other_program']) == {'seen', 'held_out', 'held_out_controls'}
    assert set(m['other_program']['gaps']['seen']) == set(m['other_program']['builtin']['seen'])
    assert set(m['phrasings']) == {'accuracy', 'gaps', 'held_out'} and m['config']['phrasings']
    assert 'captions: seen token F1' in res.stdout and 'drawn by PIL' in res.stdout
    assert 'within 10 points?' in res.stdout and 'within 5?' in res.stdout
    lm = tmp_path / 'lm'
    (tmp_path / 'a' / 'lm').rename(lm)
    res = minisiglip('vlm', 'demo', *tiny, '--lm', str(lm), '--other-program', '0', '--no-phrasings',
                     '--out', str(tmp_path / 'b'), env=run_env)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / 'b' / 'metrics.json').read_text())
    assert m['lm_pretrain_s'] is None and m['lm'] == str(lm) and not (tmp_path / 'b' / 'lm').exists()
    assert 'other_program' not in m and 'phrasings' not in m and set(m['captions']) == {'seen', 'held_out'}
    assert f'LM from {lm}' in res.stdout
    res = minisiglip('vlm', 'demo', *tiny, '--lm', str(tmp_path / 'b' / 'x'), '--out', str(tmp_path / 'b'),
                     env=run_env)
    assert res.returncode == 2 and 'lies inside' in res.stderr and 'Traceback' not in res.stderr


def test_eval_reports_chance_levels_and_multi_label(run_env, tmp_path):
    "`eval` on a 2-step run: eval.json holds the chance levels and multi-label metrics; stdout ends in the summary."
    import json
    run = tmp_path / 'run'
    two_step_run(run, run_env)
    res = minisiglip('eval', str(run), '--n', '40', env=run_env)
    assert res.returncode == 0, res.stderr
    m = json.loads((run / 'eval.json').read_text())
    assert set(m['zero_shot_chance']) == set(m['zero_shot']) and m['zero_shot_chance']['colour'] == 1 / 7
    r = m['retrieval']
    assert r['n'] == 40 and r['matches_per_image'] >= 1
    assert abs(r['chance_r1'] - r['matches_per_image'] / 40) < 1e-9            # R@1 by chance: m / n
    assert r['chance_r1'] <= r['chance_r5'] <= r['chance_r10'] <= 1
    assert {'i2t_r1', 't2i_r1', 'chance_r1', 'matches_per_image'} <= set(r['exact_caption'])
    ml = m['multi_label']
    assert ml['n'] == 20 and {'exact_set', 'precision', 'recall', 'map', 'r_precision', 'ece'} <= set(ml)
    assert set(ml['chance']) == {'exact_set', 'precision', 'recall', 'map', 'r_precision'}
    for line in ('| multi-label mAP |', '| i2t R@1 among 40 (same content) |', '| zero-shot colour |'):
        assert line in res.stdout, res.stdout


def test_train_naflex_on_wide_and_tall_scenes_then_eval(run_env, tmp_path):
    """`train --naflex --max-patches` on wide and tall scenes: a few steps through the one loop leave a NaFlex model;
    `eval` embeds NaFlex batches, and on square scenes at the native grid (budget 64 = 8 x 8 patches) the NaFlex
    path gives the fixed-resolution path's embeddings and metrics (the same weights with max_patches 0)."""
    import dataclasses, json
    from minisiglip.eval import embed, evaluate
    from minisiglip.model import SigLIP
    from minisiglip.train import TrainConfig, load_checkpoint
    from minisiglip.data import ShapesDataset
    res = minisiglip('train', '--preset', 'micro', '--naflex', '--max-patches', '64', '--aspects', '2,0.5',
                     '--steps', '3', '--batch-size', '16', '--n-train', '64', '--eval-every', '0', '--device', 'cpu',
                     '--out', str(tmp_path / 'run'), env=run_env)
    assert res.returncode == 0, res.stderr
    model, tok, state = load_checkpoint(tmp_path / 'run')
    assert (model.cfg.max_patches, model.cfg.vit_stem, state['config']['naflex']) == (64, 0, True)
    res = minisiglip('eval', str(tmp_path / 'run'), '--n', '60', '--device', 'cpu', '--json', str(tmp_path / 'e.json'),
                     env=run_env)
    assert res.returncode == 0, res.stderr
    fixed = SigLIP(dataclasses.replace(model.cfg, max_patches=0)).eval()
    fixed.load_state_dict(model.state_dict())
    images = ShapesDataset(60, 'val').images
    torch.testing.assert_close(embed(model, images), embed(fixed, images), atol=1e-5, rtol=0)
    ours, plain = json.loads((tmp_path / 'e.json').read_text()), evaluate(fixed, tok, 'shapes', 60, seed=0)
    assert (ours['zero_shot'], ours['retrieval']) == (plain['zero_shot'], plain['retrieval'])
    with pytest.raises(ValueError, match='pass naflex too'): TrainConfig(max_patches=64)
    with pytest.raises(ValueError, match='square crops'): TrainConfig(naflex=True, data=str(tmp_path))
    with pytest.raises(ValueError, match="data must be 'shapes'"): TrainConfig(aspects='2', data='digits')
