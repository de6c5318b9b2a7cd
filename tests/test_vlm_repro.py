"The VLM trains bit-reproducibly on one machine with several CPU threads (issue 35; `08c_vlm_robustness`)."
import subprocess

import torch

from minisiglip.model import KVCache


def test_select_gradient_same_every_time():
    """A cached prefix shared by repeated rows sums their gradients in one order: `k[index]`'s backward added them
    from two threads at once and differed from pass to pass (most passes on a 2-core CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        k, v = (torch.randn(32, 4, 8, 32, generator=g).requires_grad_() for _ in range(2))
        index = torch.randint(0, 32, (160,), generator=g).sort().values
        up = torch.randn(160, 4, 8, 32, generator=g)
        grads = []
        for _ in range(100):
            cache = KVCache(); cache.update(k, v); cache.select(index)
            k.grad = v.grad = None
            ((cache.k + cache.v) * up).sum().backward()
            grads.append((k.grad.clone(), v.grad.clone()))
        assert all(torch.equal(a, grads[0][0]) and torch.equal(b, grads[0][1]) for a, b in grads)
    finally: torch.set_num_threads(threads)


def test_two_vlm_runs_equal_exactly(run_env, tmp_path):
    "The demo's recipe (tower trained, value view, 3 LM blocks), twice on two threads: the same weights, bit for bit."
    siglip = tmp_path / 'siglip'
    res = subprocess.run(['minisiglip', 'train', '--preset', 'tiny_wide', '--steps', '2', '--batch-size', '16',
                          '--n-train', '64', '--eval-every', '0', '--out', str(siglip)],
                         capture_output=True, text=True, env=run_env, timeout=600)
    assert res.returncode == 0, res.stderr
    env = dict(run_env, OMP_NUM_THREADS='2')
    for out in ('a', 'b'):
        res = subprocess.run(['minisiglip', 'vlm', 'train', '--siglip', str(siglip), '--mode', 'full', '--value-view',
                              '--lm-depth', '3', '--steps', '12', '--n-images', '96', '--batch-size', '32',
                              '--warmup-steps', '2', '--out', str(tmp_path / out)],
                             capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr
    from minisiglip.vlm_train import load_vlm
    (a, _, sa), (b, _, sb) = load_vlm(tmp_path / 'a'), load_vlm(tmp_path / 'b')
    assert sa['history']['loss'] == sb['history']['loss']
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
