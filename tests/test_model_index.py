"""The model index: one entry per shipped config, teachers and students that
match the configs and the packages' zoos, the paper's numbers kept apart from
``Results``, ``mmdist::`` resolution through it, and ``mim`` on an installed
copy."""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from mmengine.config import Config
from mmengine.utils import get_installed_path

from helpers import CONFIGS, REPO
from mmdist.utils.config import PACKAGE_DIR

MIM_ROOT = osp.join(PACKAGE_DIR, '.mim')
INDEX = osp.join(MIM_ROOT, 'model-index.yml')
TASKS = ('mmdet', 'mmseg', 'mmpretrain')
METRIC = {'mmdet': 'box AP', 'mmseg': 'mIoU', 'mmpretrain': 'Top 1 Accuracy'}
ZOO_PACKAGE = {'mmdet': 'mmdet', 'mmseg': 'mmseg', 'mmpretrain': 'mmpretrain'}


def load_entries():
    with open(INDEX) as f:
        imports = yaml.safe_load(f)['Import']
    entries = {}
    for rel in imports:
        with open(osp.join(MIM_ROOT, rel)) as f:
            for model in yaml.safe_load(f)['Models']:
                assert model['Config'] not in entries, model['Config']
                entries[model['Config']] = model
    return entries


ENTRIES = load_entries()
SHIPPED = sorted(f'configs/{p.relative_to(CONFIGS)}' for task in TASKS
                 for p in (CONFIGS / task).glob('*.py'))
DISTILL = [p for p in SHIPPED if 'Teacher' in ENTRIES[p]['Metadata']]


def test_one_entry_per_shipped_config():
    assert sorted(ENTRIES) == SHIPPED
    for path, model in ENTRIES.items():
        assert model['Name'] == osp.splitext(osp.basename(path))[0]
        assert path.split('/')[1] in TASKS


def test_index_is_valid_for_mim():
    """modelindex (what `mim search` loads) reads it without errors."""
    from modelindex.load_model_index import load
    index = load(INDEX)
    assert index.check(silent=True) == []
    assert len(index.models) == len(SHIPPED)


def student_base(path: str) -> str:
    """The config a shipped distillation config takes its student from: the
    `_base_` of the config (of its chain) that sets
    `student={{_base_.model}}`."""
    text = (REPO / path).read_text()
    # The first base is the student's config (the second, if any, the
    # shared distillation runtime).
    base = Config._get_base_files(str(REPO / path))[0]
    folder = osp.dirname(path)
    if 'student={{_base_.model}}' not in text:
        return student_base(osp.join(folder, base[2:]))
    if base.startswith('./'):
        return f'mmdist::{folder.partition("/")[2]}/{base[2:]}'
    return base


def zoo_entry(config: str) -> dict:
    scope, rel = config.split('::')
    root = osp.join(
        get_installed_path({'mmseg': 'mmsegmentation'}.get(scope, scope)),
        '.mim')
    with open(osp.join(root, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    for meta in imports:
        with open(osp.join(root, meta)) as f:
            data = yaml.safe_load(f)
        for model in (data.get('Models')
                      if isinstance(data, dict) else None) or []:
            if model.get('Config') == f'configs/{rel}':
                return model
    raise KeyError(config)


def zoo_metric(model: dict, metric: str):
    results = model['Results']
    for result in results if isinstance(results, list) else [results]:
        if metric in result['Metrics']:
            return result['Metrics'][metric]
    raise KeyError(metric)


# Zoo students whose package ships the config but no metafile for it: the
# weights and number of the package's model zoo page (MMDet's
# configs/pascal_voc/README.md).
UNINDEXED = {
    'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py':
    dict(
        Weights='https://download.openmmlab.com/mmdetection/v2.0/'
        'pascal_voc/retinanet_r50_fpn_1x_voc0712/'
        'retinanet_r50_fpn_1x_voc0712_20200617-47cbdd0e.pth',
        Metrics={'box AP': 77.3}),
}


@pytest.mark.parametrize('path', DISTILL)
def test_teacher_and_student_match_config_and_zoo(path):
    """Teacher config and weights are the config's; teacher and student
    metrics are the zoo's own numbers for those checkpoints."""
    meta = ENTRIES[path]['Metadata']
    cfg = Config.fromfile(str(REPO / path))
    task = path.split('/')[1]
    metric = METRIC[task]
    teacher = meta['Teacher']
    assert teacher['Config'] == cfg.model.teacher
    assert teacher['Weights'] == cfg.model.teacher_ckpt
    zoo = zoo_entry(teacher['Config'])
    assert zoo['Weights'] == teacher['Weights']
    assert teacher['Metrics'] == {metric: zoo_metric(zoo, metric)}

    student = meta['Student']
    assert student['Config'] == student_base(path)
    if student['Config'].startswith('mmdist::'):
        assert 'Weights' not in student  # no zoo model: nothing to link
    elif student['Config'] in UNINDEXED:
        with pytest.raises(KeyError):  # so that an index entry shows up
            zoo_entry(student['Config'])
        assert dict(
            Weights=student['Weights'],
            Metrics=student['Metrics']) == UNINDEXED[student['Config']]
    else:
        zoo = zoo_entry(student['Config'])
        assert student['Weights'] == zoo['Weights']
        assert student['Metrics'] == {metric: zoo_metric(zoo, metric)}


@pytest.mark.parametrize('path', SHIPPED)
def test_recipe_fields_match_the_config(path):
    meta = ENTRIES[path]['Metadata']
    cfg = Config.fromfile(str(REPO / path))
    gpus = int(re.match(r'(\d+)x', meta['Training Resources']).group(1))
    assert gpus * cfg.train_dataloader.batch_size == meta['Batch Size']
    if 'Epochs' in meta:
        assert cfg.train_cfg.max_epochs == meta['Epochs']
    else:
        assert cfg.train_cfg.max_iters == meta['Iterations']
    method = meta.get('Distillation')
    if method is not None:
        suffix = {
            'DIST': '_dist.py',
            'KD': '_kd.py',
            'DIST + mimic': '_dist_mimic.py',
            'DIST (sync)': '_dist_sync.py'
        }[method]
        assert path.endswith(suffix)


# Pairs the paper has no row for, and the global-batch (sync) variants,
# which depart from its per-GPU statistic.
NOT_IN_PAPER = ('atss_', 'segformer_', 'mobilenet-v2', 'cifar100',
                '_dist_sync', '_voc0712_', 'dino-', 'mask2former_')


def readme_row(path: str) -> dict:
    """The results-table row of a config in its folder's README."""
    folder, name = osp.split(path)
    for line in (REPO / folder / 'README.md').read_text().splitlines():
        if line.startswith(f'| [{name}]('):
            cells = [c.strip() for c in line.strip('|').split('|')]
            return dict(
                zip(('config', 'teacher', 'student', 'paper', 'ours'), cells))
    raise KeyError(f'{path} has no row in {folder}/README.md')


@pytest.mark.parametrize('path', SHIPPED)
def test_paper_numbers_are_kept_apart_from_results(path):
    """The paper's numbers live in `Paper Results`, never in `Results`
    (which only collect_results writes from real runs); pairs the paper has
    no row for say "not reported"; the folder README's row shows the same
    paper number, the zoo numbers of teacher and student, and no result of
    ours that was not measured."""
    model = ENTRIES[path]
    paper = model['Paper Results']
    row = readme_row(path)
    digits = 1 if path.startswith('configs/mmdet') else 2
    meta = model['Metadata']
    for side in ('Teacher', 'Student'):
        metrics = (meta.get(side) or {}).get('Metrics')
        if isinstance(metrics, dict):
            (value, ) = metrics.values()
            assert f'({value:.{digits}f})' in row[side.lower()], (path, side)
    if not model.get('Results'):
        assert row['ours'] in ('-', 'not yet trained'), row
    for result in model.get('Results') or []:
        assert set(result['Metrics']) == {METRIC[path.split('/')[1]]}
    if any(key in path for key in NOT_IN_PAPER):
        assert paper == 'not reported'
        assert row['paper'] == 'not reported'
        return
    assert paper['Metric'] == METRIC[path.split('/')[1]]
    method = model['Metadata']['Distillation']
    value = paper[method]
    if isinstance(value, str):
        assert value == 'see the paper' and method == 'KD'
        assert row['paper'] == 'see the paper'
        return
    assert row['paper'] == (f'{value:.{digits}f} '
                            f'({paper["Student"]:.{digits}f})'), row
    for result in model.get('Results') or []:
        assert result['Metrics'] != {paper['Metric']: value}


def test_mmengine_reads_the_index_when_resolving_mmdist_paths(tmp_path):
    """MMEngine looks every `mmdist::` path up in .mim/model-index.yml (and
    the metafiles it imports) before .mim/configs: configs of every task
    folder, and one inheriting another relatively, still resolve from a
    fresh interpreter outside the repository."""
    from mmengine.config.utils import _get_cfg_metainfo
    meta = _get_cfg_metainfo(
        PACKAGE_DIR, 'mmseg/deeplabv3_r101-d8_to_pspnet_r18-d8_4xb2-80k_'
        'cityscapes-512x1024_dist.py')
    assert meta['Metadata']['Distillation'] == 'DIST'

    bases = [
        'mmdist::mmdet/cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_'
        '2x_coco_dist_mimic.py',
        'mmdist::mmseg/deeplabv3_r101-d8_to_pspnet_r18-d8_4xb2-80k_'
        'cityscapes-512x1024_kd.py',
        'mmdist::mmpretrain/resnet50_to_resnet18_1xb64_cifar100_kd.py',
    ]
    code = ('import sys, mmdist; from mmengine.config import Config\n'
            'for path in sys.argv[1:]:\n'
            '    cfg = Config.fromfile(path)\n'
            '    print(cfg.model.type, cfg.train_dataloader.batch_size)\n')
    paths = []
    for i, base in enumerate(bases):
        user = tmp_path / f'user_{i}.py'
        user.write_text(f"_base_ = '{base}'\n")
        paths.append(str(user))
    out = subprocess.run(
        [sys.executable, '-c', code] + paths,
        cwd=str(tmp_path),
        capture_output=True,
        text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        'mmdist.Distiller', '2', 'mmdist.Distiller', '2', 'mmdist.Distiller',
        '64'
    ]


def install_copy(tmp_path):
    """Install a copy of the working tree as a regular (non-editable)
    package into a folder of its own; return that folder."""
    src = tmp_path / 'src'
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.mim',
                                    '*.egg-info')
    src.mkdir()
    for name in ('setup.py', 'setup.cfg', 'MANIFEST.in', 'README.md'):
        shutil.copy(REPO / name, src / name)
    for name in ('mmdist', 'configs', 'tools', 'requirements'):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    site = tmp_path / 'site'
    subprocess.run([
        sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
        '--no-build-isolation', '--target',
        str(site),
        str(src)
    ],
                   check=True,
                   capture_output=True,
                   text=True,
                   timeout=600)
    return site


@pytest.mark.heavy
def test_mim_search_train_test_on_a_regular_install(tmp_path):
    """`mim search/train/test mmdist` as for MMDet, on a regular install
    (PYTHONPATH puts it ahead of the editable one): the index and every
    config are found, a tiny run trains and tests through mim."""
    from test_e2e_classification import tiny_classification_config
    site = install_copy(tmp_path)
    mim_dir = site / 'mmdist' / '.mim'
    for rel in [
            'model-index.yml', 'tools/train.py', 'tools/test.py',
            'tools/analysis_tools/collect_results.py'
    ] + SHIPPED + [f'configs/{t}/metafile.yml' for t in TASKS]:
        assert (mim_dir / rel).is_file(), rel
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONUNBUFFERED='1')
    work = tmp_path / 'run'
    work.mkdir()

    def run(*args, timeout=900):
        proc = subprocess.run([sys.executable, '-m', 'mim', *map(str, args)],
                              cwd=str(work),
                              env=env,
                              capture_output=True,
                              text=True,
                              timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc.stdout + proc.stderr

    # The installed copy is the one imported and the one mim resolves.
    where = subprocess.run([
        sys.executable, '-c', 'import mmdist, mim.utils as u; '
        'print(mmdist.__file__); print(u.get_installed_path("mmdist"))'
    ],
                           cwd=str(work),
                           env=env,
                           capture_output=True,
                           text=True)
    assert where.stdout.split() == [
        str(site / 'mmdist' / '__init__.py'),
        str(site / 'mmdist')
    ]

    listed = run('search', 'mmdist', '--field', 'config')
    for path in SHIPPED:
        assert f'config id: {ENTRIES[path]["Name"]}\n' in listed, path

    # mim finds each shipped config by its name alone (what `mim train
    # mmdist NAME.py` does when NAME.py is not a path).
    check = subprocess.run(
        [
            sys.executable, '-c',
            'import sys; from mim.utils import recursively_find\n'
            'for name in sys.argv[2:]:\n'
            '    hits = recursively_find(sys.argv[1], name,'
            ' followlinks=True)\n'
            '    print(len(hits))',
            str(site / 'mmdist')
        ] + [osp.basename(p) for p in SHIPPED],
        env=env,
        capture_output=True,
        text=True)
    assert check.stdout.split() == ['1'] * len(SHIPPED), check.stderr[-2000:]

    # MMEngine's hub resolves through the installed index too.
    hub = subprocess.run([
        sys.executable, '-c',
        'from mmengine.hub import get_config; import mmdist\n'
        'cfg = get_config("mmdist::mmpretrain/resnet50_to_resnet18_1xb64_'
        'cifar100_dist.py"); print(cfg.filename)'
    ],
                         cwd=str(work),
                         env=env,
                         capture_output=True,
                         text=True)
    assert hub.returncode == 0, hub.stderr[-3000:]
    assert hub.stdout.strip().startswith(str(mim_dir / 'configs'))

    config = tiny_classification_config(tmp_path)
    trained = run('train', 'mmdist', config, '--work-dir', work / 'train')
    assert str(mim_dir / 'tools' / 'train.py') in trained
    ckpt = work / 'train' / 'epoch_1.pth'
    assert ckpt.is_file()
    tested = run('test', 'mmdist', config, '--checkpoint', ckpt, '--work-dir',
                 work / 'test')
    assert str(mim_dir / 'tools' / 'test.py') in tested
    assert 'accuracy/top1' in tested


def test_mim_from_the_checkout_with_the_editable_install():
    """With the editable install, `python -m mim` run from the repository
    root resolves mmdist to the checkout (through its mmdist.egg-info) and
    lists the index."""
    if not (REPO / 'mmdist.egg-info').is_dir():
        pytest.skip('no mmdist.egg-info: not an editable install')
    out = subprocess.run(
        [sys.executable, '-m', 'mim', 'search', 'mmdist', '--field', 'config'],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for path in SHIPPED:
        assert f'config id: {ENTRIES[path]["Name"]}\n' in out.stdout, path
