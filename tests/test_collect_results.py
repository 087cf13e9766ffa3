"""tools/analysis_tools/collect_results.py on real runs: the table, the recipe
check, unfinished runs, and Results written into metafiles."""
import json
import re
import shutil

import pytest
import yaml

from helpers import REPO, run_tool
from mmdist.utils.config import PACKAGE_DIR

INDEX_HEADER = '# a metafile of the test\n# second comment line\n'


def cells(line: str) -> list:
    """The cells of a markdown table line (``\\|`` is a ``|`` in a cell)."""
    return [
        c.strip().replace('\\|', '|')
        for c in re.split(r'(?<!\\)\|',
                          line.strip()[1:-1])
    ]


def table_rows(output: str) -> dict:
    """Rows of the markdown table printed by the tool, by config name."""
    rows = {}
    lines = [line for line in output.splitlines() if line.startswith('| ')]
    cols = cells(lines[0])
    for line in lines[2:]:
        row = dict(zip(cols, cells(line)))
        rows[row['config'].strip('`')] = row
    return rows


def last_validation(work_dir) -> dict:
    """The last validation record of a run, read without the tool."""
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    records = [
        json.loads(line) for line in scalars.read_text().splitlines()
        if line.strip()
    ]
    return [r for r in records if 'lr' not in r][-1]


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """One real tiny distillation run through tools/train.py."""
    from test_e2e_classification import tiny_classification_config
    root = tmp_path_factory.mktemp('collect')
    config = tiny_classification_config(root)
    work = root / 'work_dirs' / 'tiny_resnet_dist'
    run_tool('train.py', config, '--work-dir', work)
    return config, work


def make_index(root, entries):
    """A model index of its own: configs/tests/metafile.yml with one entry
    per (name, config file) pair, imported by root/model-index.yml."""
    folder = root / 'configs' / 'mmpretrain'
    folder.mkdir(parents=True)
    models = []
    for name, config_text in entries:
        (folder / f'{name}.py').write_text(config_text)
        models.append({
            'Name': name,
            'Config': f'configs/mmpretrain/{name}.py',
            'Metadata': {
                'Training Data': 'Shapes',
                'Training Resources': '1x CPU',
                'Epochs': 1,
                'Batch Size': 4,
                'Distillation': 'DIST',
                'Student': {
                    'Name': 'ResNet-18'
                },
                'Teacher': {
                    'Name': 'ResNet-34 (random)'
                },
            },
            'Paper Results': 'not reported',
        })
    metafile = folder / 'metafile.yml'
    metafile.write_text(INDEX_HEADER +
                        yaml.safe_dump({'Models': models}, sort_keys=False))
    (root / 'model-index.yml'
     ).write_text('Import:\n  - configs/mmpretrain/metafile.yml\n')
    return root / 'model-index.yml', metafile


def copy_run(work, dest, name, edit=None):
    """A copy of a work dir whose config is renamed (and edited)."""
    shutil.copytree(work, dest, ignore=shutil.ignore_patterns('*.pth'))
    (copy, ) = dest.glob('*.py')
    text = copy.read_text()
    copy.unlink()
    if edit:
        text = edit(text)
        for dumped in dest.glob('*/vis_data/config.py'):
            dumped.write_text(text)
    (dest / f'{name}.py').write_text(text)


@pytest.mark.heavy
def test_table_reports_the_last_validation_of_a_run(tiny_run):
    config, work = tiny_run
    out = run_tool('analysis_tools/collect_results.py', work.parent).stdout
    row = table_rows(out)['tiny_resnet_dist.py']
    expected = last_validation(work)['accuracy/top1']
    assert row['reproduced'] == f'{expected:.2f}'
    assert row['metric'] == 'Top 1 Accuracy'
    assert row['schedule'] == '1 epochs x 4 images (1x4)'
    assert row['teacher'] == 'ImageClassifier (ResNet-34), teacher.pth'
    assert row['student'] == 'ImageClassifier (ResNet-18)'
    assert row['paper'] == '- (not in the model index)'


@pytest.mark.heavy
def test_update_metafiles_writes_only_runs_with_the_recipe(tiny_run, tmp_path):
    """A finished run with its config's recipe is written as that entry's
    Results; a run whose lr differs from its config's, and an unfinished
    one, are listed and left out."""
    config, work = tiny_run
    text = config.read_text()
    assert 'lr=0.1,' in text and 'max_epochs=1,' in text
    index, metafile = make_index(tmp_path / 'mim', [
        ('tiny_resnet_dist', text),
        ('tiny_other_lr', text.replace('lr=0.1,', 'lr=0.2,')),
        ('tiny_longer', text.replace('max_epochs=1,', 'max_epochs=2,')),
    ])
    runs = tmp_path / 'runs'
    shutil.copytree(
        work,
        runs / 'tiny_resnet_dist',
        ignore=shutil.ignore_patterns('*.pth'))
    copy_run(work, runs / 'other', 'tiny_other_lr')
    copy_run(
        work,
        runs / 'longer',
        'tiny_longer',
        edit=lambda t: t.replace('max_epochs=1,', 'max_epochs=2,'))

    out = run_tool('analysis_tools/collect_results.py', runs, '--index', index,
                   '--update-metafiles').stdout
    value = last_validation(work)['accuracy/top1']
    rows = table_rows(out)
    assert rows['tiny_resnet_dist.py']['reproduced'] == f'{value:.2f}'
    assert 'recipe differs from the config' in rows['tiny_other_lr.py'][
        'reproduced']
    assert 'optim_wrapper.optimizer.lr: 0.1 (shipped 0.2)' in rows[
        'tiny_other_lr.py']['reproduced']
    assert 'at epoch 1 of 2' in rows['tiny_longer.py']['reproduced']
    assert 'not written: tiny_other_lr' in out
    assert 'not written: tiny_longer' in out

    text = metafile.read_text()
    assert text.startswith(INDEX_HEADER)
    models = {m['Name']: m for m in yaml.safe_load(text)['Models']}
    assert models['tiny_resnet_dist']['Results'] == [{
        'Task': 'Image Classification',
        'Dataset': 'Shapes',
        'Metrics': {
            'Top 1 Accuracy': round(value, 2)
        },
    }]
    assert 'Results' not in models['tiny_other_lr']
    assert 'Results' not in models['tiny_longer']
    # The index still loads as mim loads it, and lists the written result.
    from modelindex.load_model_index import load
    assert load(str(index)).check(silent=True) == []
    listed = run_tool('analysis_tools/collect_results.py', '--index', index,
                      '--all').stdout
    assert table_rows(listed)['tiny_resnet_dist.py']['reproduced'] == \
        f'{round(value, 2)} (from the metafile)'


def test_all_lists_every_indexed_config_as_not_run():
    """Without runs, `--all` gives the README table: every config of the
    installed index, the paper's number for its method, "not run yet"."""
    out = run_tool('analysis_tools/collect_results.py', '--all').stdout
    rows = table_rows(out)
    with open(f'{PACKAGE_DIR}/.mim/model-index.yml') as f:
        imports = yaml.safe_load(f)['Import']
    names = []
    for rel in imports:
        with open(f'{PACKAGE_DIR}/.mim/{rel}') as f:
            names += [m['Name'] for m in yaml.safe_load(f)['Models']]
    assert sorted(rows) == sorted(f'{n}.py' for n in names)
    assert {r['reproduced'] for r in rows.values()} == {'not run yet'}
    retina = rows['retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py']
    assert retina['paper'] == 'DIST 39.8; student alone 37.4'
    assert retina['teacher'] == 'RetinaNet X101-64x4d-FPN 1x (41.0)'
    assert retina['schedule'] == '24 epochs x 16 images (8x GPUs)'
    assert rows['atss_r101_to_r50_fpn_1x_coco_dist.py']['paper'] == \
        'not reported'
    seg = rows['deeplabv3_r101-d8_to_pspnet_r18-d8_4xb2-80k_cityscapes-'
               '512x1024_dist.py']
    assert seg['paper'] == 'DIST 76.31; student alone 72.55'
    assert seg['schedule'] == '80k iters x 8 images (4x GPUs)'


def test_readme_results_table_is_the_tools_output():
    """The README's results table is what the tool prints for the index."""
    from helpers import REPO
    out = run_tool('analysis_tools/collect_results.py', '--all').stdout
    table = '\n'.join(line for line in out.splitlines()
                      if line.startswith('| '))
    assert table in (REPO / 'README.md').read_text()


# ------------------------------------------------- fabricated work dirs
RETINA = 'retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist'


def fake_run(work_dir,
             name,
             config_text,
             records,
             world=8,
             stamp='20260101_000000'):
    """A work dir as tools/train.py leaves it: the config copy, the dumped
    config, ``scalars.json`` (lines given as they are) and the log line
    with the number of processes."""
    vis = work_dir / stamp / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'config.py').write_text(config_text)
    (work_dir / f'{name}.py').write_text(config_text)
    (vis / 'scalars.json').write_text(''.join(
        (r if isinstance(r, str) else json.dumps(r)) + '\n' for r in records))
    (work_dir / stamp / f'{stamp}.log').write_text(
        f'2026/01/01 00:00:00 - mmengine - INFO - GPU number: {world}\n')


def as_trained(path, edit=None):
    """The text of a config as tools/train.py dumps it for a DDP run, its
    data under another root (``edit`` changes the config first)."""
    from mmengine.config import Config

    from mmdist.engine import enable_fault_tolerance
    from mmdist.utils import resolve_teacher_paths
    cfg = Config.fromfile(str(path))
    if edit:
        edit(cfg)
    cfg.launcher = 'pytorch'
    resolve_teacher_paths(cfg, str(path))
    cfg.work_dir = '/elsewhere/work_dirs/run'
    cfg.default_hooks.logger.interval = 10
    enable_fault_tolerance(cfg)
    # What cpu_launch_config adds for a DDP run on CPUs.
    cfg.model_wrapper_cfg = dict(
        type='mmdist.CPUCompatibleDDP', broadcast_buffers=False)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')

    def move(node):  # the data set under /mnt/coco/ instead
        if isinstance(node, dict):
            return {k: move(v) for k, v in node.items()}
        if isinstance(node, list):
            return [move(v) for v in node]
        if isinstance(node, str) and node.startswith('data/coco/'):
            return '/mnt/coco/' + node[len('data/coco/'):]
        return node

    for key in ('data_root', 'train_dataloader', 'val_dataloader',
                'val_evaluator', 'test_dataloader', 'test_evaluator'):
        if key in cfg:
            value = cfg[key]
            cfg[key] = move(
                value.to_dict() if hasattr(value, 'to_dict') else value)
    dumped = path.parent / f'.dump_{path.name}'
    try:
        cfg.dump(str(dumped))
        return dumped.read_text()
    finally:
        dumped.unlink()


def table_lines(output: str) -> list:
    """Every row of the printed table, as dicts (duplicates kept)."""
    lines = [line for line in output.splitlines() if line.startswith('| ')]
    cols = cells(lines[0])
    return [dict(zip(cols, cells(line))) for line in lines[2:]]


def test_runs_are_compared_whole_and_bad_work_dirs_are_skipped(tmp_path):
    """Issue 23, items 2 and 3, in one table:

    - a run of the shipped RetinaNet recipe (data elsewhere, DDP, the
      tools' hooks) matches it and is written to the metafile;
    - one with a ResNet-18 student and another training Resize is
      "recipe differs", named, and not written (it was credited before);
    - a truncated last line of scalars.json, a validation without metrics
      and a dumped ``lr=inf`` no longer abort the table: the first is read
      up to that line, the others are skipped naming the work dir;
    - two work dirs of one config are told apart by the work dir column;
    - a plain run's teacher is "- (student alone)";
    - ``--index configs/model-index.yml`` (the repository's layout) loads.
    """
    configs = tmp_path / 'repo' / 'configs'
    shutil.copytree(
        REPO / 'configs', configs, ignore=shutil.ignore_patterns('demo'))
    shipped = configs / 'mmdet' / f'{RETINA}.py'
    same = as_trained(shipped)

    def smaller(cfg):
        cfg.model.student.backbone.depth = 18
        cfg.model.student.neck.in_channels = [64, 128, 256, 512]
        (resize, ) = [
            t for t in cfg.train_dataloader.dataset.pipeline
            if t['type'] == 'Resize'
        ]
        resize['scale'] = (666, 400)

    other = as_trained(shipped, smaller)
    val = {'coco/bbox_mAP': 0.301, 'coco/bbox_mAP_50': 0.5, 'step': 24}
    train = {'lr': 0.01, 'loss': 1.0, 'step': 100}
    runs = tmp_path / 'work_dirs'
    fake_run(runs / 'a', RETINA, same, [train, val])
    fake_run(runs / 'b', RETINA, other, [train, val])
    fake_run(runs / 'c', RETINA, same,
             [train, dict(val, step=12), '{"lr": 0.01, "lo'])
    plain = as_trained(REPO / 'configs' / 'mmpretrain' /
                       'resnet18_1xb64_cifar100.py')
    fake_run(
        runs / 'plain',
        'my_cifar_run',
        plain, [{
            'accuracy/top1': 41.5,
            'step': 240
        }],
        world=1)
    fake_run(
        runs / 'diverged',
        'my_cifar_run',
        plain, [train, {
            'step': 240
        }],
        world=1)
    fake_run(
        runs / 'inf_lr',
        'my_cifar_run',
        plain.replace('lr=0.05', 'lr=inf'), [{
            'accuracy/top1': 1.0,
            'step': 240
        }],
        world=1)

    index = configs / 'model-index.yml'
    proc = run_tool('analysis_tools/collect_results.py', runs, '--index',
                    index, '--update-metafiles')
    rows = table_lines(proc.stdout)
    by_dir = {row['work dir'].split('/')[-1]: row for row in rows}
    assert sorted(by_dir) == ['a', 'b', 'c', 'plain']
    assert by_dir['a']['reproduced'] == '30.1'
    assert by_dir['a']['schedule'] == '24 epochs x 16 images (8x2)'
    differs = by_dir['b']['reproduced']
    assert differs.startswith('30.1 (recipe differs from the config: ')
    assert 'model.student.backbone.depth: 18 (shipped 50)' in differs
    assert ('model.student.neck.in_channels: [64, 128, 256, 512] (shipped '
            '[256, 512, 1024, 2048])') in differs
    assert by_dir['c']['reproduced'] == '30.1 (at epoch 12 of 24)'
    assert by_dir['plain']['teacher'] == '- (student alone)'
    assert by_dir['plain']['config'] == '`my_cifar_run.py`'

    err = proc.stderr
    assert re.search(r'last line is truncated', err)
    assert re.search(
        rf'skipping {runs / "diverged"}: its last validation '
        r'\(step 240.*returned no metrics', err)
    assert re.search(
        rf"skipping {runs / 'inf_lr'}: its config .* does not "
        r"load \(NameError: name 'inf' is not defined", err)

    out = proc.stdout
    assert f'not written: {RETINA} ({runs / "b"}): its recipe differs' in out
    assert ('train_dataloader.dataset.pipeline.2.scale: [666, 400] '
            '(shipped [1333, 800])') in out
    assert f'written: {RETINA}: box AP 30.1' in out
    meta = yaml.safe_load((configs / 'mmdet' / 'metafile.yml').read_text())
    (model, ) = [m for m in meta['Models'] if m['Name'] == RETINA]
    assert model['Results'][0]['Metrics'] == {'box AP': 30.1}


def test_every_ignored_key_is_named_with_a_reason():
    """The keys left out of the comparison are listed with why."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'collect_results',
        REPO / 'tools' / 'analysis_tools' / 'collect_results.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert all(key and reason for key, reason in tool.IGNORED)
    a = dict(
        model=dict(student=dict(depth=50)),
        work_dir='a',
        train_dataloader=dict(
            num_workers=2,
            dataset=dict(data_root='/x/', ann_file='/x/train.json')))
    b = dict(
        model=dict(student=dict(depth=18)),
        work_dir='b',
        train_dataloader=dict(
            num_workers=8,
            dataset=dict(data_root='/y', ann_file='/y/train.json')))
    assert tool.config_differences(
        b, a) == ['model.student.depth: 18 (shipped 50)']


ATSS = 'atss_r101_to_r50_fpn_1x_coco_dist'


def test_a_run_is_described_by_its_own_config_not_by_its_file_name(tmp_path):
    """Issue 27, item 2: a run of the demo RetinaNet-R18 student whose
    config copy is named after the shipped ATSS recipe is not credited to
    ATSS: its teacher and student cells come from the config it ran with,
    and the differing models are the first differences named."""
    demo = as_trained(REPO / 'configs' / 'demo' / 'det_student_dist.py')
    runs = tmp_path / 'work_dirs'
    train = {'lr': 0.01, 'loss': 1.0, 'step': 50}
    val = {'coco/bbox_mAP': 0.123, 'step': 300}
    fake_run(runs / 'renamed', ATSS, demo, [train, val], world=1)
    # The shipped recipe itself is still credited to the zoo's models.
    shipped = as_trained(REPO / 'configs' / 'mmdet' / f'{ATSS}.py')
    val = {'coco/bbox_mAP': 0.401, 'step': 12}
    fake_run(runs / 'shipped', ATSS, shipped, [val])
    rows = {
        row['work dir'].split('/')[-1]: row
        for row in table_lines(
            run_tool('analysis_tools/collect_results.py', runs).stdout)
    }

    renamed = rows['renamed']
    assert renamed['config'] == f'`{ATSS}.py`'
    assert renamed['student'] == 'RetinaNet (ResNet-18)'
    assert renamed['teacher'] == 'RetinaNet (ResNet-34), iter_1000.pth'
    assert renamed['reproduced'].startswith(
        '12.3 (recipe differs from the config: student: RetinaNet '
        '(ResNet-18) (shipped ATSS (ResNet-50)); teacher: RetinaNet '
        '(ResNet-34), iter_1000.pth (shipped ATSS (ResNet-101), '
        'atss_r101_fpn_1x_20200825-dfcadd6f.pth); ')
    assert rows['shipped']['teacher'] == 'ATSS R101-FPN 1x (41.5)'
    assert rows['shipped']['student'] == 'ATSS R50-FPN 1x'
    assert rows['shipped']['reproduced'] == '40.1'


def test_walking_a_tree_warns_about_folders_without_a_run(tmp_path):
    """Issue 27, item 10: an empty folder and a crashed run (a config copy,
    a log and a dumped config, no ``scalars.json``) beside a good run are
    named on stderr, as a folder named directly is."""
    plain = as_trained(REPO / 'configs' / 'mmpretrain' /
                       'resnet18_1xb64_cifar100.py')
    runs = tmp_path / 'work_dirs'
    val = {'accuracy/top1': 41.5, 'step': 240}
    fake_run(runs / 'good', 'my_cifar_run', plain, [val], world=1)
    (runs / 'empty').mkdir()
    fake_run(runs / 'nested' / 'good', 'my_cifar_run', plain, [val], world=1)
    (runs / 'nested' / 'empty').mkdir()
    crashed = runs / 'crashed'
    fake_run(
        crashed, 'my_cifar_run', plain, [], world=1, stamp='20260102_000000')
    (crashed / '20260102_000000' / 'vis_data' / 'scalars.json').unlink()

    proc = run_tool('analysis_tools/collect_results.py', runs)
    assert sorted(row['work dir'] for row in table_lines(proc.stdout)) == [
        str(runs / 'good'), str(runs / 'nested' / 'good')
    ]
    err = proc.stderr
    assert f'no MMEngine run found in {runs / "empty"}: it is empty' in err
    assert (f'no MMEngine run found in {runs / "nested" / "empty"}: it is '
            'empty') in err
    assert re.search(
        rf'no MMEngine run found in {crashed}: its run 20260102_000000 '
        r'wrote no vis_data/scalars\.json', err)
    # One warning per folder: not its timestamp folder as well.
    assert str(crashed / '20260102_000000') not in err
    assert str(runs / 'good') not in err
