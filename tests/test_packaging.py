"""Packaging as OpenMMLab packages it: requirements read from
``requirements/*.txt`` as version ranges, task packages as extras, the
license, citation and changelog files, and a source distribution that builds
a wheel with that metadata."""
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from typing import Dict, List, Tuple

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REQUIREMENTS = osp.join(ROOT, 'requirements')
TASKS = {
    'mmdet': 'mmdet',
    'mmseg': 'mmsegmentation',
    'mmpretrain': 'mmpretrain'
}


def load_setup():
    """``setup.py`` as a module (its ``setup()`` call is under ``__main__``).

    Returns:
        module: The loaded module, with ``parse_requirements`` and ``extras``.
    """
    spec = importlib.util.spec_from_file_location('mmdist_setup',
                                                  osp.join(ROOT, 'setup.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(fname: str) -> Dict[str, str]:
    """The ``name==version`` lines of a requirements file.

    Args:
        fname (str): File name in ``requirements/``.

    Returns:
        dict[str, str]: Version by lower-case package name.
    """
    found = {}
    for spec in load_setup().parse_requirements(fname):
        req = Requirement(spec)
        (only, ) = req.specifier
        assert only.operator == '==', spec
        found[req.name.lower()] = only.version
    return found


def test_install_requires_are_ranges_from_runtime_txt():
    setup = load_setup()
    install_requires = setup.parse_requirements('runtime.txt')
    assert install_requires, 'requirements/runtime.txt lists nothing'
    for spec in install_requires:
        req = Requirement(spec)  # a malformed line raises here
        assert all(s.operator != '==' for s in req.specifier), (
            f'{spec}: install_requires holds ranges, not exact pins')
    names = {Requirement(spec).name for spec in install_requires}
    # `import mmdist` needs none of the task packages: they are extras.
    assert not names & set(TASKS.values()), names
    assert {'torch', 'mmengine'} <= names


def test_extras():
    extras = load_setup().extras()
    assert set(extras) == {
        'mmdet', 'mmseg', 'mmpretrain', 'tests', 'docs', 'mim', 'all'
    }
    for extra, package in TASKS.items():
        reqs = {
            Requirement(spec).name: Requirement(spec)
            for spec in extras[extra]
        }
        assert package in reqs and 'mmcv' in reqs, extra
        for req in reqs.values():
            assert all(s.operator != '==' for s in req.specifier), req
        assert set(extras[extra]) <= set(extras['all'])


def test_tested_releases_lie_in_the_ranges():
    """requirements/tested.txt (what `make install` installs) pins releases
    every range of the other files admits."""
    setup = load_setup()
    tested = pins('tested.txt')
    for fname in sorted(os.listdir(REQUIREMENTS)):
        if not fname.endswith('.txt') or fname == 'tested.txt':
            continue
        for spec in setup.parse_requirements(fname):
            req = Requirement(spec)
            if req.name.lower() in tested:
                assert req.specifier.contains(
                    tested[req.name.lower()], prereleases=True), (
                        f'{fname}: {spec} refuses the tested '
                        f'{req.name}=={tested[req.name.lower()]}')


def upstream_mmcv_range(module: str) -> Tuple[str, str]:
    """The mmcv range a task package asserts when imported, read from its
    ``__init__.py`` (importing it would import torch and mmcv).

    Args:
        module (str): ``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``.

    Returns:
        tuple[str, str]: The lowest accepted and the first refused version.
    """
    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f'{module} is not installed')
    with open(spec.origin) as f:
        source = f.read()
    found = dict(
        re.findall(r"^(mmcv_m\w+_version|MMCV_M\w+) = '([^']+)'", source,
                   re.M))
    low = found.get('mmcv_minimum_version', found.get('MMCV_MIN'))
    high = found.get('mmcv_maximum_version', found.get('MMCV_MAX'))
    assert low and high, f'{spec.origin} no longer states its mmcv range'
    return low, high


@pytest.mark.parametrize('extra', sorted(TASKS))
def test_mmcv_range_within_what_the_task_package_accepts(extra):
    """Each task package refuses, at import, an mmcv outside its own range;
    ours must not admit one it refuses."""
    low, high = upstream_mmcv_range(extra)
    (mmcv, ) = [
        Requirement(spec) for spec in load_setup().extras()[extra]
        if Requirement(spec).name == 'mmcv'
    ]
    assert not mmcv.specifier.contains(high, prereleases=True), (mmcv, high)
    lows = [s.version for s in mmcv.specifier if s.operator == '>=']
    assert lows and all(Version(version) >= Version(low)
                        for version in lows), (mmcv, low)


def test_import_mmdist_without_task_packages():
    """The core imports none of MMDetection, MMSegmentation, MMPretrain or
    mmcv, which is what lets them be extras."""
    code = ('import sys\n'
            "for name in ('mmdet', 'mmseg', 'mmpretrain', 'mmcv'):\n"
            '    sys.modules[name] = None\n'
            'import mmdist\n'
            'print(mmdist.__version__)\n')
    result = subprocess.run([sys.executable, '-c', code],
                            cwd=ROOT,
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_license_citation_changelog():
    with open(osp.join(ROOT, 'LICENSE')) as f:
        license_text = f.read()
    assert 'Apache License' in license_text
    assert 'Version 2.0, January 2004' in license_text
    assert 'mmdist contributors' in license_text

    with open(osp.join(ROOT, 'CITATION.cff')) as f:
        citation = yaml.safe_load(f)
    assert citation['cff-version'] == '1.2.0'
    assert citation['license'] == 'Apache-2.0'
    paper = citation['preferred-citation']
    assert paper['title'] == 'Knowledge Distillation from A Stronger Teacher'
    assert [a['family-names'] for a in paper['authors']
            ] == ['Huang', 'You', 'Wang', 'Qian', 'Xu']
    assert paper['year'] == 2022
    assert '2205.10536' in paper['url']

    version = load_setup().read_version()
    assert citation['version'] == version
    with open(osp.join(ROOT, 'CHANGELOG.md')) as f:
        assert f'## v{version}' in f.read()


def checkout_files() -> List[str]:
    """The files a fresh clone of this checkout would hold (tracked, and
    new files not ignored), relative to the root."""
    listed = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True).stdout.splitlines()
    return [path for path in listed if osp.isfile(osp.join(ROOT, path))]


def test_sdist_builds_a_wheel_with_the_metadata(tmp_path):
    """``setup.py sdist`` in a copy of the checkout, then a wheel from the
    unpacked sdist: the sdist must carry everything setup.py reads."""
    if shutil.which('git') is None:
        pytest.skip('git is needed to list the checkout')
    src = tmp_path / 'src'
    for path in checkout_files():
        os.makedirs(osp.dirname(src / path), exist_ok=True)
        shutil.copy2(osp.join(ROOT, path), src / path)
    subprocess.run([
        sys.executable, 'setup.py', '-q', 'sdist', '-d',
        str(tmp_path / 'dist')
    ],
                   cwd=src,
                   check=True,
                   capture_output=True)
    (sdist, ) = (tmp_path / 'dist').glob('mmdist-*.tar.gz')
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / 'unpacked', filter='data')
    (unpacked, ) = (tmp_path / 'unpacked').iterdir()
    built = subprocess.run([
        sys.executable, '-m', 'pip', 'wheel', '--no-deps',
        '--no-build-isolation', '-q', '-w',
        str(tmp_path / 'wheel'),
        str(unpacked)
    ],
                           capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel, ) = (tmp_path / 'wheel').glob('mmdist-*.whl')

    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (meta_name, ) = [n for n in names if n.endswith('.dist-info/METADATA')]
        meta = Parser().parsestr(whl.read(meta_name).decode())
    setup = load_setup()
    requires = meta.get_all('Requires-Dist')
    core = [r for r in requires if 'extra ==' not in r]
    assert sorted(Requirement(r).name for r in core) == sorted(
        Requirement(r).name for r in setup.parse_requirements('runtime.txt'))
    assert set(meta.get_all('Provides-Extra')) == set(setup.extras())
    assert not any('==' in r for r in core), core
    assert 'Apache' in (meta['License-Expression'] or meta['License'] or '')
    with open(osp.join(ROOT, 'README.md')) as f:
        assert meta.get_payload().strip() == f.read().strip()
    assert any(
        n.endswith('.dist-info/licenses/LICENSE')
        or n.endswith('.dist-info/LICENSE') for n in names)
    # MMEngine and mim read configs, tools and the model index from .mim.
    assert 'mmdist/.mim/model-index.yml' in names
    assert 'mmdist/.mim/tools/train.py' in names
    assert any(n.startswith('mmdist/.mim/configs/mmdet/') for n in names)
