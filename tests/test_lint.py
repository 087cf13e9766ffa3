"""Lint with OpenMMLab's settings: flake8, isort and yapf, as configured in
setup.cfg, run from the interpreter running the tests (the checkout's venv).

Each test fails with the tool's own report and, for isort and yapf, the
command that rewrites the files as the tool wants them.
"""
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Every tracked folder that holds Python; mmdist/.mim (generated at install
# time) is excluded by setup.cfg for flake8 and isort, and below for yapf.
TARGETS = [
    path for path in ('mmdist', 'tools', 'tests', 'configs', '.dev_scripts',
                      'docs', 'setup.py') if osp.exists(osp.join(ROOT, path))
]


def run_tool(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m <tool> args`` in the checkout's root.

    Args:
        *args (str): The module name of the tool and its arguments.

    Returns:
        subprocess.CompletedProcess: The finished run, output captured.
    """
    try:
        __import__(args[0])
    except ImportError:
        pytest.fail(f'{args[0]} is not installed in {sys.executable}: run '
                    f'`make install` (requirements/tests.txt lists it).')
    return subprocess.run([sys.executable, '-m', *args],
                          cwd=ROOT,
                          capture_output=True,
                          text=True)


def check(result: subprocess.CompletedProcess, fix: str) -> None:
    """Fail with the tool's output and how to fix it when the tool found
    something.

    Args:
        result (subprocess.CompletedProcess): The tool's run.
        fix (str): How to fix the findings, in one line.
    """
    if result.returncode != 0:
        pytest.fail(f'{fix}\n{result.stdout}{result.stderr}', pytrace=False)


def test_flake8():
    check(
        run_tool('flake8', *TARGETS),
        'flake8 findings (fix by hand; isort and yapf fix layout):')


def test_isort():
    check(
        run_tool('isort', '--check-only', '--diff', *TARGETS),
        f'Imports out of order; fix with: {sys.executable} -m isort '
        f'{" ".join(TARGETS)}')


def test_yapf():
    # --parallel: yapf is the slowest of the three.
    check(
        run_tool('yapf', '--diff', '--recursive', '--parallel', '--exclude',
                 'mmdist/.mim/*', *TARGETS),
        f'Not formatted as yapf would; fix with: {sys.executable} -m yapf -i '
        f'-r -p {" ".join(TARGETS)}')
