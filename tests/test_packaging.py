"""`pip install minisiglip` works: build the wheel, install it into a fresh venv, use it from there.

The new venv reuses the torch already installed here (a 5 GB download otherwise) through a `.pth` file naming
this interpreter's site-packages. `--system-site-packages` would not do: it exposes the *base* interpreter's
packages, not this venv's. A `.pth` path is added to sys.path without processing the .pth files inside it, so
the editable install of the working tree stays invisible and the import must come from the wheel.
"""
import subprocess, sys, sysconfig, venv
from pathlib import Path

from conftest import REPO


def run(cmd: list, **kw) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_wheel_installs_and_runs(tmp_path, run_env):
    run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'dist')], cwd=REPO)
    wheel, = (tmp_path / 'dist').glob('minisiglip-*.whl')
    venv.create(tmp_path / 'venv', with_pip=True)
    py = tmp_path / 'venv' / 'bin' / 'python'
    site = Path(run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).strip())
    (site / 'parent_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    run([str(py), '-m', 'pip', 'install', '--no-deps', '--no-index', str(wheel)])
    code = ("import minisiglip, torch, torch.nn.functional as F; from minisiglip.losses import sigmoid_loss; "
            "z = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1); "
            "print(minisiglip.__file__); print(float(sigmoid_loss(z, z, 10., -10.)))")
    file, loss = run([str(py), '-c', code], cwd=tmp_path).split()
    assert file.startswith(str(tmp_path / 'venv')), f"imported {file}, not the installed wheel"
    assert 0 < float(loss) < 20
    assert 'losses' in run([str(tmp_path / 'venv' / 'bin' / 'minisiglip'), '--help'], cwd=tmp_path)
