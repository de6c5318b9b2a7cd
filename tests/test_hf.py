"""Hugging Face SigLIP folders: random `SiglipModel`s of several shapes saved by transformers load into minisiglip with
the same features, and round-trip back (no download: every model is built from a config)."""
import json
import pytest
import torch

transformers = pytest.importorskip('transformers')
from transformers import SiglipConfig, SiglipModel
from minisiglip.hf import load_siglip, save_siglip, SigLIPTokenizer
from minisiglip.losses import sigmoid_loss
from minisiglip.train import load_checkpoint

# (text config, vision config): widths, depths, heads, MLP sizes, patch and image sizes, eps and activation vary
SHAPES = {
    'base-like': (dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
                  dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8)),
    'so400m-like (odd MLP, wider text head)': (
        dict(hidden_size=48, intermediate_size=172, num_hidden_layers=1, num_attention_heads=3, projection_size=72),
        dict(hidden_size=72, intermediate_size=172, num_hidden_layers=3, num_attention_heads=6,
             image_size=30, patch_size=14)),                      # 2 x 2 patches, 2 pixels left out (So400M: 6)
    'eps and exact gelu': (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, layer_norm_eps=1e-5,
             hidden_act='gelu', max_position_embeddings=8),
        dict(hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, layer_norm_eps=1e-5,
             hidden_act='gelu', image_size=16, patch_size=4)),
}


def features(hf: SiglipModel, images: torch.Tensor, ids: torch.Tensor) -> tuple:
    "transformers' pooled image and text features and logits, for images in [0, 1] (pixel_values = 2x - 1)."
    pooled = lambda out: getattr(out, 'pooler_output', out)
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=2 * images - 1, return_loss=True)
        return (pooled(hf.get_image_features(pixel_values=2 * images - 1)), pooled(hf.get_text_features(input_ids=ids)),
                out.logits_per_image, out.loss)


@pytest.mark.parametrize('shape', SHAPES)
def test_transformers_folder_loads_with_the_same_features_and_round_trips(shape, tmp_path):
    torch.manual_seed(0)
    text, vision = SHAPES[shape]
    hf = SiglipModel(SiglipConfig(text_config=dict(vocab_size=80, **text), vision_config=vision)).eval()
    with torch.no_grad(): hf.logit_scale.fill_(2.0); hf.logit_bias.fill_(-5.0)
    hf.save_pretrained(tmp_path / 'hf')
    size, length = vision['image_size'], text.get('max_position_embeddings', 64)
    images, ids = torch.rand(5, 3, size, size), torch.randint(2, 80, (5, length))
    img_ref, txt_ref, logits_ref, loss_ref = features(hf, images, ids)

    ours = load_siglip(tmp_path / 'hf')
    with torch.no_grad():
        torch.testing.assert_close(ours.image(images), img_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.text(ids), txt_ref, atol=1e-5, rtol=1e-5)
        zimg, ztxt, scale, bias = ours(images, ids)
        torch.testing.assert_close(scale * zimg @ ztxt.T + bias, logits_ref, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(sigmoid_loss(zimg, ztxt, scale, bias), loss_ref, atol=1e-5, rtol=1e-5)

    back = SiglipModel.from_pretrained(save_siglip(ours, tmp_path / 'ours')).eval()
    for a, b in zip(features(back, images, ids), (img_ref, txt_ref, logits_ref, loss_ref)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)                      # the same float32 weights, bit for bit


def test_sharded_folder_and_half_precision_weights(tmp_path):
    "A checkpoint saved in shards (with an index) and in bfloat16 loads as one float32 model."
    torch.manual_seed(1)
    text, vision = SHAPES['base-like']
    hf = SiglipModel(SiglipConfig(text_config=dict(vocab_size=80, **text), vision_config=vision)).eval()
    hf.to(torch.bfloat16).save_pretrained(tmp_path / 'hf', max_shard_size='100KB')
    assert (tmp_path / 'hf' / 'model.safetensors.index.json').is_file()
    ours = load_siglip(tmp_path / 'hf')
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    images = torch.rand(3, 3, 32, 32)
    img_ref = features(hf.float(), images, torch.randint(2, 80, (3, 64)))[0]
    torch.testing.assert_close(ours.image(images), img_ref, atol=1e-5, rtol=1e-5)


def test_spiece_tokenizer_pads_like_transformers(tmp_path):
    "Google's folders ship spiece.model: ours pads it to max_length exactly as transformers' SiglipTokenizer does."
    spm = pytest.importorskip('sentencepiece')
    corpus = tmp_path / 'corpus.txt'
    colours, shapes = ('red', 'green', 'blue'), ('circle', 'square')
    corpus.write_text('\n'.join(f'a photo of a {c} {s}' for c in colours for s in shapes) * 20)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / 'spiece'), vocab_size=24,
                                   pad_id=1, eos_id=2, unk_id=0, bos_id=-1, minloglevel=2)
    captions = ['A photo of a RED circle!', 'blue square']
    tok = SigLIPTokenizer(tmp_path, context_length=12, pad_id=1)
    ids = tok(captions)
    theirs = transformers.SiglipTokenizer(vocab_file=str(tmp_path / 'spiece.model'))
    assert ids.shape == (2, 12)
    assert ids.tolist() == theirs(captions, padding='max_length', max_length=12, truncation=True)['input_ids']
    assert tok.pad_id == theirs.pad_token_id != 1                   # the tokenizer's own pad token, not the config's


def test_commands_take_a_transformers_folder(run_env, tmp_path):
    """`eval --hf`, `train --init-hf` (with the folder's tokenizer.json) and `vlm train --siglip` on a transformers
    folder, through the console script; naming both a run and --hf is one line on stderr, exit 2."""
    import subprocess
    from tokenizers import Tokenizer, models, pre_tokenizers
    from minisiglip.data import Tokenizer as Words
    text, vision = SHAPES['base-like']
    SiglipModel(SiglipConfig(text_config=dict(vocab_size=80, max_position_embeddings=16, **text),
                             vision_config=vision)).save_pretrained(tmp_path / 'hf')
    words = ['<unk>', '</s>'] + [w for w in Words.for_shapes().vocab if not w.startswith('<')]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>'))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / 'hf' / 'tokenizer.json'))
    run = lambda *args: subprocess.run(['minisiglip', *map(str, args)], capture_output=True, text=True, env=run_env,
                                       timeout=600)
    res = run('eval', '--hf', tmp_path / 'hf', '--n', '50', '--json', tmp_path / 'hf_eval.json')
    assert res.returncode == 0, res.stderr
    assert (tmp_path / 'hf_eval.json').is_file()
    from minisiglip.data import ShapesDataset
    from torchvision.utils import save_image
    pairs = ShapesDataset(6, 'val', image_size=32)
    (tmp_path / 'mine').mkdir()
    for i, (image, caption) in enumerate(zip(pairs.images, pairs.captions)):    # a caption folder: x.png + x.txt
        save_image(image, tmp_path / 'mine' / f'{i}.png'); (tmp_path / 'mine' / f'{i}.txt').write_text(caption)
    res = run('eval', '--hf', tmp_path / 'hf', '--data', tmp_path / 'mine', '--json', tmp_path / 'mine.json')
    assert res.returncode == 0, res.stderr
    assert 'i2t_r1' in json.loads((tmp_path / 'mine.json').read_text())['retrieval']
    res = run('train', '--init-hf', tmp_path / 'hf', '--steps', '3', '--batch-size', '8', '--n-train', '64',
              '--eval-every', '0', '--device', 'cpu', '--out', tmp_path / 'tuned')
    assert res.returncode == 0, res.stderr
    res = run('eval', tmp_path / 'tuned', '--n', '50')               # the run finds the folder's tokenizer again
    assert res.returncode == 0, res.stderr
    tuned, tok, _ = load_checkpoint(tmp_path / 'tuned')             # back to a transformers folder, tokenizer too
    out = save_siglip(tuned, tmp_path / 'tuned_hf', tokenizer_from=tmp_path / 'hf')
    assert (out / 'tokenizer.json').is_file()
    assert torch.equal(SigLIPTokenizer.from_folder(out)(['a red circle']), tok(['a red circle']))
    assert torch.equal(SiglipModel.from_pretrained(out).text_model.head.weight, tuned.text.encoder.proj.weight)
    res = run('vlm', 'train', '--siglip', tmp_path / 'hf', '--steps', '2', '--n-images', '40', '--batch-size', '8',
              '--out', tmp_path / 'vlm')
    assert res.returncode == 0, res.stderr
    res = run('eval', tmp_path / 'tuned', '--hf', tmp_path / 'hf')
    assert res.returncode == 2 and 'one of the two' in res.stderr.strip().splitlines()[-1]


# SigLIP 2 NaFlex (text config, vision config, sequence budget): position grids of 4 x 4 and 8 x 8, budgets below,
# at and above the grid, patch sides 4 and 8, exact gelu with another epsilon
NAFLEX = {
    'grid 4x4, budget 24': (dict(hidden_size=48, intermediate_size=120, num_hidden_layers=2, num_attention_heads=4),
                            dict(hidden_size=48, intermediate_size=120, num_hidden_layers=2, num_attention_heads=4,
                                 num_patches=16, patch_size=4), 24),
    'grid 8x8, budget 64': (dict(hidden_size=32, intermediate_size=80, num_hidden_layers=1, num_attention_heads=2,
                                 projection_size=64),
                            dict(hidden_size=64, intermediate_size=100, num_hidden_layers=2, num_attention_heads=8,
                                 num_patches=64, patch_size=8), 64),
    'grid 8x8, budget 20, exact gelu': (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, hidden_act='gelu',
             layer_norm_eps=1e-5),
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, hidden_act='gelu',
             layer_norm_eps=1e-5, num_patches=64, patch_size=4), 20),
}
ASPECTS = [(32, 32), (16, 64), (64, 16), (24, 40), (8, 100), (90, 7)]   # pixels (height, width): square, wide, tall


@pytest.mark.parametrize('shape', NAFLEX)
def test_siglip2_naflex_folder_loads_with_the_same_features(shape, tmp_path):
    "A random Siglip2Model's folder: our features of images at their own aspect ratios equal its own within 1e-5."
    from transformers import Siglip2Config, Siglip2Model, Siglip2ImageProcessor
    from minisiglip.siglip2 import naflex_batch
    torch.manual_seed(0)
    text, vision, budget = NAFLEX[shape]
    text = dict(vocab_size=80, max_position_embeddings=16, bos_token_id=2, eos_token_id=3, **text)
    hf = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)).eval()
    with torch.no_grad(): hf.logit_scale.fill_(2.0); hf.logit_bias.fill_(-5.0)
    hf.save_pretrained(tmp_path / 'hf')
    images = [torch.rand(3, h, w) for h, w in ASPECTS]
    inputs = Siglip2ImageProcessor(patch_size=vision['patch_size'], max_num_patches=budget)(
        images, do_rescale=False, return_tensors='pt')                 # transformers' own input pipeline
    ids = torch.randint(2, 80, (len(images), 16))
    pooled = lambda out: getattr(out, 'pooler_output', out)

    ours = load_siglip(tmp_path / 'hf')
    batch = naflex_batch(images, vision['patch_size'], budget)        # ours, made independently
    assert torch.equal(batch.shapes, inputs['spatial_shapes'])
    with torch.no_grad():
        out = hf(input_ids=ids, **inputs, return_loss=True)
        torch.testing.assert_close(ours.image(batch), pooled(hf.get_image_features(**inputs)), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.text(ids), pooled(hf.get_text_features(input_ids=ids)), atol=1e-5, rtol=0)
        zimg, ztxt, scale, bias = ours(batch, ids)
        torch.testing.assert_close(scale * zimg @ ztxt.T + bias, out.logits_per_image, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(sigmoid_loss(zimg, ztxt, scale, bias), out.loss, atol=1e-5, rtol=1e-5)


def test_siglip2_naflex_square_images_at_the_native_grid_take_the_plain_path(tmp_path):
    "A loaded NaFlex model on square images of its native size: the plain (B, 3, S, S) path gives transformers' features."
    from transformers import Siglip2Config, Siglip2Model, Siglip2ImageProcessor
    torch.manual_seed(1)
    text, vision, _ = NAFLEX['grid 8x8, budget 64']
    hf = Siglip2Model(Siglip2Config(text_config=dict(vocab_size=80, bos_token_id=2, eos_token_id=3, **text),
                                    vision_config=vision)).eval()
    hf.save_pretrained(tmp_path / 'hf')
    ours = load_siglip(tmp_path / 'hf')
    assert ours.cfg.image_size == 64                                  # 8 x 8 positions of 8-pixel patches
    images = torch.rand(3, 3, 64, 64)
    inputs = Siglip2ImageProcessor(patch_size=8, max_num_patches=64)(list(images), do_rescale=False,
                                                                      return_tensors='pt')
    with torch.no_grad():
        theirs = hf.get_image_features(**inputs)
        torch.testing.assert_close(ours.image(images), getattr(theirs, 'pooler_output', theirs), atol=1e-5, rtol=0)


@pytest.mark.parametrize('shape', NAFLEX)
def test_our_naflex_model_saves_as_a_siglip2_folder_with_the_same_features(shape, tmp_path):
    """A random NaFlex model of ours (`max_patches` > 0, every weight perturbed) saved by `save_siglip`: transformers'
    `Siglip2Model` loads the folder, and its features of images at their own aspect ratios (through its own
    processor) equal ours within 1e-5."""
    import dataclasses
    from transformers import Siglip2Config, Siglip2Model, Siglip2ImageProcessor
    from minisiglip.hf import siglip_config
    from minisiglip.model import SigLIP
    from minisiglip.siglip2 import naflex_batch
    torch.manual_seed(2)
    text, vision, budget = NAFLEX[shape]
    hf_cfg = Siglip2Config(text_config=dict(vocab_size=80, max_position_embeddings=16, **text), vision_config=vision)
    ours = SigLIP(dataclasses.replace(siglip_config(hf_cfg.to_dict()), max_patches=budget)).eval()
    with torch.no_grad():
        for p in ours.parameters(): p.add_(0.05 * torch.randn_like(p))
    folder = save_siglip(ours, tmp_path / 'ours')
    assert json.loads((folder / 'config.json').read_text())['model_type'] == 'siglip2'
    hf = Siglip2Model.from_pretrained(folder).eval()
    images = [torch.rand(3, h, w) for h, w in ASPECTS]
    inputs = Siglip2ImageProcessor(patch_size=vision['patch_size'], max_num_patches=budget)(
        images, do_rescale=False, return_tensors='pt')
    ids = torch.randint(2, 80, (len(images), 16))
    pooled = lambda out: getattr(out, 'pooler_output', out)
    with torch.no_grad():
        batch = naflex_batch(images, vision['patch_size'], budget)
        torch.testing.assert_close(ours.image(batch), pooled(hf.get_image_features(**inputs)), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.text(ids), pooled(hf.get_text_features(input_ids=ids)), atol=1e-5, rtol=0)
        zimg, ztxt, scale, bias = ours(batch, ids)
        out = hf(input_ids=ids, **inputs)
        torch.testing.assert_close(scale * zimg @ ztxt.T + bias, out.logits_per_image, atol=1e-4, rtol=1e-5)
    back = load_siglip(folder)                                        # and back: the same model, budget aside
    assert back.cfg == dataclasses.replace(ours.cfg, max_patches=vision['num_patches'])
