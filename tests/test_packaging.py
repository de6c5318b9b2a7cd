"""`pip install minisiglip` works: build the wheel, install it into a fresh venv, use it from there.

The new venv reuses the torch already installed here (a 5 GB download otherwise) through a `.pth` file naming
this interpreter's site-packages. `--system-site-packages` would not do: it exposes the *base* interpreter's
packages, not this venv's. A `.pth` path is added to sys.path without processing the .pth files inside it, so
the editable install of the working tree stays invisible and the import must come from the wheel.
"""
import subprocess, sys, sysconfig, venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent   # not `from conftest import`: tests/gpu has a conftest too


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


def test_release_files_hold_the_library_and_nothing_of_the_runs(tmp_path):
    """`make dist`'s sdist and wheel: the sdist builds the wheel on its own (it carries settings.ini), twine accepts
    both, the wheel holds the package, its CLI and licence and no notebook, run or test, and the long description's
    links point at the repository (they are relative in README.md)."""
    import tarfile, zipfile
    run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(tmp_path)], cwd=REPO)
    sdist, = tmp_path.glob('minisiglip-*.tar.gz')
    wheel, = tmp_path.glob('minisiglip-*.whl')
    run([sys.executable, '-m', 'twine', 'check', '--strict', str(sdist), str(wheel)])
    files = zipfile.ZipFile(wheel).namelist()
    assert all(f.startswith(('minisiglip/', 'minisiglip-')) for f in files), files
    assert {'minisiglip/cli.py', 'minisiglip/kernels.py'} <= set(files)
    info = next(f for f in files if f.endswith('.dist-info/entry_points.txt'))
    assert 'minisiglip = minisiglip.cli:main' in zipfile.ZipFile(wheel).read(info).decode()
    assert any(f.endswith('licenses/LICENSE') for f in files)
    metadata = zipfile.ZipFile(wheel).read(next(f for f in files if f.endswith('METADATA'))).decode()
    assert '](docs/' not in metadata and '](https://github.com/minisiglip/minisiglip/blob/main/docs/' in metadata
    names = tarfile.open(sdist).getnames()
    assert any(n.endswith('/settings.ini') for n in names)
    assert not any(part in n for n in names for part in ('/nbs/', '/tests/', '/docs/')), names


def test_workflows_follow_the_github_schema():
    "The CI and release workflows validate against GitHub's workflow schema (check-jsonschema's vendored copy)."
    workflows = sorted(str(p) for p in (REPO / '.github' / 'workflows').glob('*.yaml'))
    assert len(workflows) == 2, workflows
    run([sys.executable, '-m', 'check_jsonschema', '--builtin-schema', 'vendor.github-workflows', *workflows])
