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
