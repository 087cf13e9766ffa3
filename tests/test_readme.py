"""The README and the benchmarks page: the README stays a short front page
(install, quick start, zoo, demo, links) whose commands match the shipped
recipes; every measurement lives on docs/en/notes/benchmarks.md with its
date, commit, hardware and command."""
import os.path as osp
import re
from typing import Dict, List

import pytest
import yaml
from mmengine.config import Config

from helpers import CONFIGS, REPO

README = REPO / 'README.md'
BENCHMARKS = REPO / 'docs' / 'en' / 'notes' / 'benchmarks.md'
# Sections of the benchmarks page that hold no measurement of their own.
NOT_MEASUREMENTS = ('Where the shipped defaults come from', )


def doc_pages() -> List:
    """The README and every page of docs/en."""
    return [README] + sorted((REPO / 'docs' / 'en').rglob('*.md'))


def test_readme_is_a_short_front_page():
    """At most 200 lines, the test commands `.ci/run` and contributors use,
    and no wording tied to one machine (measurements name their hardware
    on the benchmarks page)."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for command in ('make install', 'make test ', 'make test-all', 'make demo',
                    'tools/train.py', 'tools/test.py', 'tools/dist_train.sh',
                    'tools/model_converters/export_student.py'):
        assert command in text, command
    assert 'https://arxiv.org/abs/2205.10536' in text
    narrative = re.compile(
        r'this (2-core )?(machine|cpu)|the lent|shared at the time|H200',
        re.IGNORECASE)
    assert not narrative.search(text), narrative.search(text).group(0)


def test_setup_ships_the_readme_as_long_description():
    setup = (REPO / 'setup.py').read_text()
    assert "long_description=open(osp.join(HERE, 'README.md')).read()" in \
        setup


def test_dist_train_commands_agree_with_the_recipes():
    """Every `tools/dist_train.sh CONFIG N` of a zoo config in the README
    and the docs trains with the number of images per step of the config's
    recipe (model index)."""
    from mmdist.utils.config import PACKAGE_DIR
    index_root = osp.join(PACKAGE_DIR, '.mim')
    with open(osp.join(index_root, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    batch = {}
    for rel in imports:
        with open(osp.join(index_root, rel)) as f:
            for model in yaml.safe_load(f)['Models']:
                batch[model['Config'].partition('/')[-1]] = \
                    model['Metadata']['Batch Size']
    text = '\n'.join(page.read_text() for page in doc_pages())
    commands = set(
        re.findall(
            r'tools/dist_train\.sh configs/'
            r'((?:mmdet|mmseg|mmpretrain)/\S+\.py) (\d+)', text))
    assert commands
    for path, gpus in sorted(commands):
        cfg = Config.fromfile(str(CONFIGS / path))
        assert int(gpus) * cfg.train_dataloader.batch_size == batch[path], (
            path, gpus)


def benchmark_sections() -> Dict[str, str]:
    """The benchmarks page split at its headings: title -> text."""
    sections: Dict[str, str] = {}
    title = None
    for line in BENCHMARKS.read_text().splitlines():
        heading = re.match(r'#+ (.*)', line)
        if heading:
            title = heading.group(1)
            sections[title] = ''
        elif title is not None:
            sections[title] += line + '\n'
    return sections


@pytest.mark.parametrize(
    'title', [t for t, text in benchmark_sections().items() if '\n| ' in text])
def test_every_benchmark_table_is_dated(title):
    """Each section with a table says when (date and commit), on what and
    how it was measured, as a list above the table or as table columns."""
    if title in NOT_MEASUREMENTS:
        return
    text = benchmark_sections()[title]
    assert re.search(r'Date, commit: \d{4}-\d\d-\d\d, `[0-9a-f]{7,}`',
                     text) or '| date, commit |' in text, title
    assert '- Hardware:' in text, title
    assert '- Command:' in text or '| command |' in text, title


def test_benchmark_commits_exist():
    """The commits the benchmarks page cites are in this repository's
    history (skipped outside a git checkout)."""
    import shutil
    import subprocess
    if shutil.which('git') is None or not (REPO / '.git').exists():
        pytest.skip('not a git checkout')
    shallow = subprocess.run(['git', 'rev-parse', '--is-shallow-repository'],
                             cwd=REPO,
                             capture_output=True,
                             text=True).stdout.strip()
    if shallow == 'true':
        pytest.skip('a shallow clone lacks the history')
    cited = set(re.findall(r'`([0-9a-f]{7})`', BENCHMARKS.read_text()))
    assert cited
    for commit in sorted(cited):
        out = subprocess.run(['git', 'cat-file', '-e', f'{commit}^{{commit}}'],
                             cwd=REPO,
                             capture_output=True)
        assert out.returncode == 0, commit
