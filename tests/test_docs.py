"""The documentation: README.md and every page under docs/.

- the Sphinx build of ``docs/en`` passes with warnings as errors;
- every relative link resolves to a file and every ``#anchor`` to a heading
  of the target page, slugified as GitHub and MyST do;
- the model zoo table is what ``collect_results.py --all`` prints;
- every ``python`` block parses, and every block that is a distillation
  config (it assigns ``model = dict(type='mmdist.Distiller', ...)``) builds
  a distiller with random weights, nothing downloaded;
- every ``shell`` / ``bash`` command runs in this venv (``heavy``), from a
  scratch folder with generated demo data, or is on :data:`SKIPPED` with
  its reason.

The pages are read when the tests are collected, so a page edited after
the last run is what is checked. The conventions a page must follow are in
``docs/en/notes/contributing.md``.
"""
import ast
import glob
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / 'docs'
ZOO_PAGE = DOCS / 'en' / 'model_zoo.md'
FENCE = re.compile(r'^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$')
HEADING = re.compile(r'^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?'
                  r'(?:\s+"[^"]*")?\s*\)')
REFERENCE = re.compile(r'^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)', re.M)
HTML_ANCHOR = re.compile(r'<a\s+(?:name|id)="([^"]+)"')
MYST_TARGET = re.compile(r'^\(([^)\s]+)\)=\s*$', re.M)
SCHEME = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')


def pages() -> List[Path]:
    """README.md and every Markdown page under docs/."""
    return [REPO / 'README.md'] + sorted(DOCS.rglob('*.md'))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def fenced_blocks(text: str) -> Iterator[Tuple[str, int, str]]:
    """Each fenced block of a Markdown text: (language, first line number,
    body with the fence's indentation removed)."""
    lines = text.split('\n')
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match['indent']), match['fence']
        closing = re.compile(r'^ *' + re.escape(fence[0]) + '{' +
                             str(len(fence)) + r',}\s*$')
        body = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line)
            j += 1
        info = match['info'].strip()
        yield (info.split()[0] if info else ''), i + 1, '\n'.join(body)
        i = j + 1


def prose(text: str, code_spans: bool = False) -> str:
    """The text without fenced blocks and HTML comments, and without inline
    code unless ``code_spans`` (the line count is kept, so line numbers
    still hold)."""
    out, fence = [], None
    for line in text.split('\n'):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match['fence']
            out.append('')
        elif fence is not None:
            if re.match(
                    r'^ *' + re.escape(fence[0]) + '{' + str(len(fence)) +
                    r',}\s*$', line):
                fence = None
            out.append('')
        else:
            out.append(line)
    text = '\n'.join(out)
    text = re.sub(
        r'<!--.*?-->', lambda m: '\n' * m[0].count('\n'), text, flags=re.S)
    if code_spans:
        return text
    return re.sub(r'(`+)(?!`).+?(?<!`)\1(?!`)', '', text)


def slugify(title: str) -> str:
    """A heading's anchor as GitHub (and MyST's ``myst_heading_anchors``)
    make it: the rendered text lower-cased, spaces to hyphens, everything
    but word characters, hyphens and spaces dropped."""
    title = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', title)  # link text
    title = title.replace('`', '')
    return re.sub(r'[^\w\- ]', '', title.strip().lower().replace(' ', '-'))


def anchors(path: Path) -> Set[str]:
    """Every anchor a page defines: its headings (a repeated heading gets
    ``-1``, ``-2``, ... as on GitHub), HTML anchors and MyST targets."""
    text = path.read_text()
    found: Set[str] = set()
    seen: Dict[str, int] = {}
    for line in prose(text, code_spans=True).split('\n'):
        match = HEADING.match(line)
        if not match:
            continue
        slug = slugify(match[2])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f'{slug}-{count}')
    found.update(HTML_ANCHOR.findall(text))
    found.update(MYST_TARGET.findall(text))
    return found


def links(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, target) of every link and image of a page, outside
    code."""
    text = prose(path.read_text())
    for pattern in (LINK, REFERENCE):
        for match in pattern.finditer(text):
            yield text.count('\n', 0, match.start()) + 1, match[1]


def broken_links(path: Path, root: Path = REPO) -> List[str]:
    """Every relative link of a page (in the folder ``root``) that does not
    resolve, and why."""
    problems = []
    for line, target in links(path):
        if not target or SCHEME.match(target):
            continue  # a web address, or an empty target
        file_part, _, anchor = target.partition('#')
        where = f'{path.relative_to(root)}:{line}: {target}'
        dest = (path.parent / unquote(file_part)).resolve() \
            if file_part else path
        if not dest.exists():
            problems.append(f'{where}: no file {dest}')
            continue
        try:
            dest.relative_to(root)
        except ValueError:
            problems.append(f'{where}: {dest} is outside {root}')
            continue
        if anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            problems.append(f'{where}: no heading of '
                            f'{dest.relative_to(root)} has the anchor '
                            f'#{anchor}')
    return problems


def blocks_of(languages: Tuple[str, ...]) -> List[Tuple[str, str]]:
    """(id ``page:line``, body) of every fenced block in these languages."""
    found = []
    for path in pages():
        for lang, line, body in fenced_blocks(path.read_text()):
            if lang in languages:
                found.append((f'{rel(path)}:{line}', body))
    return found


# ------------------------------------------------------------ the build
def test_sphinx_build_has_no_warnings(tmp_path):
    """``sphinx-build -W`` of docs/en: a broken cross-reference, a page
    outside the toctree or a bad directive fails."""
    command = [
        sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
        'html', '-d',
        str(tmp_path / 'doctrees'),
        str(DOCS / 'en'),
        str(tmp_path / 'html')
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert (tmp_path / 'html' / 'index.html').is_file()


# ------------------------------------------------------ links and anchors
def test_slugs_follow_github():
    assert slugify('Checkpoint loading on torch 2.6 and later') == \
        'checkpoint-loading-on-torch-26-and-later'
    assert slugify('A fast teacher (`teacher_precision`)') == \
        'a-fast-teacher-teacher_precision'
    assert slugify('What happens when...') == 'what-happens-when'
    assert slugify('[Model zoo](model_zoo.md)') == 'model-zoo'


def test_every_page_is_found():
    found = {rel(p) for p in pages()}
    assert {
        'README.md', 'docs/en/index.md', 'docs/en/get_started.md',
        'docs/en/model_zoo.md', 'docs/en/notes/benchmarks.md',
        'docs/en/user_guides/supported_models.md'
    } <= found


@pytest.mark.parametrize('page', pages(), ids=rel)
def test_relative_links_and_anchors_resolve(page):
    problems = broken_links(page)
    assert not problems, '\n'.join(problems)


def test_link_checker_finds_a_broken_anchor(tmp_path):
    (tmp_path / 'en').mkdir()
    (tmp_path / 'en' / 'index.md').write_text('# The index\n')
    page = tmp_path / 'page.md'
    page.write_text('# Title\n\n## A `code` part\n\n## Title\n\n'
                    '[ok](#a-code-part) [bad](#nope) [again](#title-1) '
                    '[file](en/index.md#the-index) [gone](en/missing.md) '
                    '`[in a span](#ignored)`\n\n'
                    '```text\n[in code](#ignored)\n```\n')
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert '#nope' in problems[0] and 'missing.md' in problems[1]


# ------------------------------------------------------------ model zoo
def collect_results_module():
    spec = importlib.util.spec_from_file_location(
        'collect_results',
        REPO / 'tools' / 'analysis_tools' / 'collect_results.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_zoo_table_is_what_collect_results_prints():
    """The table between the markers of model_zoo.md equals
    ``python tools/analysis_tools/collect_results.py --all`` (no runs: the
    index's entries with the results recorded in the metafiles)."""
    tool = collect_results_module()
    entries = tool.load_index(str(REPO / 'configs' / 'model-index.yml'))
    expected = tool.table(tool.build_rows([], entries, include_all=True))
    text = ZOO_PAGE.read_text()
    match = re.search(
        r'<!-- collect_results: begin.*?-->\n(.*?)\n<!-- collect_results: '
        r'end -->', text, re.S)
    assert match, f'{rel(ZOO_PAGE)} lost its collect_results markers'
    assert match[1].strip() == expected.strip(), (
        f'{rel(ZOO_PAGE)} is stale: replace the table between the markers '
        'with the output of python tools/analysis_tools/collect_results.py '
        f'--all:\n{expected}')
    assert len(expected.splitlines()) == len(entries) + 2


# ------------------------------------------------------------- snippets
PYTHON_BLOCKS = blocks_of(('python', 'py'))


def is_distiller_config(tree: ast.Module) -> bool:
    """Whether a snippet assigns ``model = dict(type='mmdist.Distiller',
    ...)`` at its top level: a whole config file."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == 'model'
                for t in node.targets) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == 'dict'):
            for kw in node.value.keywords:
                if (kw.arg == 'type' and isinstance(kw.value, ast.Constant) and
                        kw.value.value in ('mmdist.Distiller', 'Distiller')):
                    return True
    return False


def _tree(body: str) -> Optional[ast.Module]:
    try:
        return ast.parse(body)
    except SyntaxError:
        return None  # test_python_snippet_parses reports it


CONFIG_BLOCKS = [(name, body) for name, body in PYTHON_BLOCKS
                 if _tree(body) and is_distiller_config(_tree(body))]


@pytest.mark.parametrize(
    'body', [b for _, b in PYTHON_BLOCKS], ids=[n for n, _ in PYTHON_BLOCKS])
def test_python_snippet_parses(body):
    ast.parse(body)


def test_the_docs_have_config_snippets():
    assert len(CONFIG_BLOCKS) >= 3, 'no short-form config snippet found'


@pytest.mark.parametrize(
    'body', [b for _, b in CONFIG_BLOCKS], ids=[n for n, _ in CONFIG_BLOCKS])
def test_config_snippet_builds_a_distiller(body, tmp_path):
    """The snippet, saved as a config file, loads and builds with random
    weights (``teacher_ckpt`` and every ``Pretrained`` init dropped)."""
    from mmengine.config import Config

    from mmdist.distillers import Distiller
    from mmdist.testing import strip_pretrained
    from mmdist.utils import build_model

    path = tmp_path / 'snippet_config.py'
    path.write_text(body + '\n')
    cfg = Config.fromfile(str(path))
    strip_pretrained(cfg.model)
    model = build_model(cfg)
    assert isinstance(model, Distiller)
    assert len(model.terms) > 0


# ------------------------------------------------------- shell commands
#: Commands not run, as (regular expression searched in the command, why).
#: The first match decides; every other command of the docs runs.
SKIPPED = (
    (r'^(make install|python3? -m venv|\S*pip3? install|mim install|'
     r'pre-commit install)\b',
     'installs packages; the tests run in the installed venv'),
    (r'^make (test|test-all)\b', 'runs the test suite, which runs this test'),
    (r'-m pytest\b', 'runs tests, as `make test` does'),
    (r'^make demo\b', 'trains the demo teachers and students (minutes); '
     'tests/test_demo.py runs its pipeline at a small size'),
    (r'^source\b', 'sets up an interactive shell; the commands here already '
     'run with the venv first in PATH'),
    (r'\bslurm_(train|test)\.sh\b', 'needs a Slurm cluster; '
     'tests/test_fault_injection.py runs slurm_train.sh against a fake srun'),
    (r'\bNNODES=', 'several nodes'),
    (r'\bdist_(train|test)\.sh\b', 'several processes on several GPUs; '
     'tests/test_multiprocess.py trains with tools/dist_train.sh on CPUs'),
    (r'^mim\b', 'mim needs a regular (not editable) install; '
     'tests/test_model_index.py checks what mim reads'),
    (r'gpu_check', 'needs a CUDA GPU; tests/test_gpu_check.py runs the same '
     'script on the CPU at small sizes'),
    (r'-m sphinx\b', 'the docs build: test_sphinx_build_has_no_warnings'),
    (r'\.dev_scripts/supported_models\.py', 'rewrites a page of the '
     'repository; tests/test_families.py checks that it is current'),
    (r'tools/(train|test)\.py configs/(mmdet|mmseg|mmpretrain)/',
     'needs the full data set (COCO, Cityscapes, ImageNet, CIFAR-100) and '
     'the zoo teacher checkpoint'),
    (r'work_dirs/(retinanet|deeplabv3|resnet)[\w.-]*/\S+\.pth',
     'needs a checkpoint of a shipped config trained on its full data set'),
    (r'<[A-Za-z_][\w-]*>', 'holds a placeholder'),
)
TRAIN_ITERS = 'train_cfg.max_iters=2'
# work_dirs/<run>/iter_N.pth (or epoch_N): the checkpoint of a docs run.
RUN_CKPT = re.compile(r'\bwork_dirs/([\w.-]+)/(?:iter|epoch)_\d+\.pth\b')
# The demo teachers' checkpoints, as the demo configs and the docs name them.
TEACHER_CKPT = re.compile(r'\bwork_dirs/demo/(det|seg)/teacher/[\w.-]+\.pth')


def commands(body: str) -> List[str]:
    """The commands of a shell block: continuation lines joined, prompts,
    comments and blank lines dropped."""
    out, current = [], ''
    for line in body.split('\n'):
        line = re.sub(r'^\$\s+', '', line.strip())
        if line.endswith('\\'):
            current += line[:-1] + ' '
            continue
        # A trailing comment (outside quotes) goes: options are appended.
        line = re.sub(r'\s+#\s[^\'"]*$', '', current + line)
        current = ''
        if line and not line.startswith('#'):
            out.append(line)
    return out


def skip_reason(command: str) -> Optional[str]:
    for pattern, reason in SKIPPED:
        if re.search(pattern, command):
            return reason
    return None


def unique_commands() -> List[Tuple[str, str]]:
    """Every command of the docs once (by its first place), in order."""
    seen, out = set(), []
    for name, body in blocks_of(('shell', 'bash', 'sh')):
        for i, command in enumerate(commands(body), 1):
            if command not in seen:
                seen.add(command)
                out.append((f'{name}#{i}', command))
    return out


SHELL_COMMANDS = unique_commands()


def shell_params():
    params = []
    for name, command in SHELL_COMMANDS:
        reason = skip_reason(command)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(command, id=name, marks=marks))
    return params


def test_every_shell_command_runs_or_is_skipped_for_a_reason():
    assert SHELL_COMMANDS, 'no shell command found in the docs'
    ran = [c for _, c in SHELL_COMMANDS if skip_reason(c) is None]
    assert any('tools/train.py' in c for c in ran)
    assert skip_reason('pip install -e .') and skip_reason(
        'GPUS=16 bash tools/slurm_train.sh p j cfg.py wd')
    assert skip_reason('python tools/train.py configs/demo/det_student.py') \
        is None


class Scratch:
    """A folder the docs' commands run in: copies of tools/ and configs/,
    the demo data sets (small) and random demo teacher checkpoints in
    work_dirs/demo/, as after ``make demo``."""

    def __init__(self, root: Path):
        self.root = root
        ignore = shutil.ignore_patterns('__pycache__')
        for folder in ('tools', 'configs'):
            shutil.copytree(REPO / folder, root / folder, ignore=ignore)
        from mmdist.testing import make_cityscapes, make_coco_detection
        data = root / 'work_dirs' / 'demo' / 'data'
        make_coco_detection(
            str(data / 'coco'),
            num_train=8,
            num_val=4,
            size=(128, 128),
            clutter=False,
            occlusion=False)
        make_cityscapes(
            str(data / 'cityscapes'), num_train=8, num_val=4, size=(128, 64))
        named = ' '.join(
            [c for _, c in SHELL_COMMANDS] +
            [p.read_text() for p in (REPO / 'configs' / 'demo').glob('*.py')])
        for task, path in {(m[1], m[0]) for m in TEACHER_CKPT.finditer(named)}:
            self.save_random_teacher(task, root / path)
        self.env = dict(
            os.environ,
            PATH=osp.dirname(sys.executable) + os.pathsep +
            os.environ.get('PATH', ''),
            PYTHON=sys.executable,
            PYTHONUNBUFFERED='1',
            MPLBACKEND='Agg')

    @staticmethod
    def save_random_teacher(task: str, path: Path) -> None:
        """A checkpoint of the demo teacher with random weights."""
        if path.exists():
            return
        import torch
        from mmengine.config import Config

        from mmdist.testing import strip_pretrained
        from mmdist.utils import build_model
        cfg = Config.fromfile(
            str(REPO / 'configs' / 'demo' / f'{task}_teacher.py'))
        strip_pretrained(cfg.model)
        model = build_model(cfg)
        model.init_weights()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(meta=dict(), state_dict=model.state_dict()), path)

    def run(self, command: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(['bash', '-c', command],
                              cwd=self.root,
                              env=self.env,
                              capture_output=True,
                              text=True,
                              timeout=900)
        assert proc.returncode == 0, (
            f'{command}\nexit status {proc.returncode}\n'
            f'{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}')
        return proc

    def last_checkpoint(self, run: str) -> str:
        """The last checkpoint of work_dirs/<run>; a run of the demo config
        of that name is trained first (two iterations) if none exists."""
        marker = self.root / 'work_dirs' / run / 'last_checkpoint'
        config = Path('configs') / 'demo' / f'{run}.py'
        if not marker.exists() and (self.root / config).exists():
            self.run(f'python tools/train.py {config} --work-dir '
                     f'work_dirs/{run} --cfg-options {TRAIN_ITERS}')
        assert marker.exists(), (
            f'no run in work_dirs/{run}: train it in an earlier command or '
            'name a demo config')
        return marker.read_text().strip()

    def prepare(self, command: str) -> str:
        """The command as run: two training iterations, and checkpoints of
        earlier runs by their real names."""
        if re.search(r'\btools/train\.py\b', command):
            if '--cfg-options' in command:
                command = command.replace('--cfg-options',
                                          f'--cfg-options {TRAIN_ITERS}', 1)
            else:
                command += f' --cfg-options {TRAIN_ITERS}'

        def checkpoint(match):
            if (self.root / match[0]).exists():
                return match[0]
            return self.last_checkpoint(match[1])

        return RUN_CKPT.sub(checkpoint, command)


def metafiles() -> Dict[str, str]:
    return {
        p: Path(p).read_text()
        for p in glob.glob(str(REPO / 'configs' / '*' / 'metafile.yml'))
    }


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    before = metafiles()
    yield Scratch(tmp_path_factory.mktemp('docs_commands'))
    changed = [p for p, text in metafiles().items() if before.get(p) != text]
    for path in changed:  # a docs command must not edit the repository
        Path(path).write_text(before[path])
    assert not changed, f'a docs command rewrote {changed}'


@pytest.mark.heavy
@pytest.mark.parametrize('command', shell_params())
def test_shell_command_runs(command, scratch):
    scratch.run(scratch.prepare(command))
