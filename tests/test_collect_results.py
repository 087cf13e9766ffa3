"""tools/analysis/collect_results.py on real runs: the table, the recipe
check, unfinished runs, and Results written into metafiles."""
import json
import shutil

import pytest
import yaml

from helpers import run_tool
from mmdist.utils.config import PACKAGE_DIR

INDEX_HEADER = '# a metafile of the test\n# second comment line\n'


def table_rows(output: str) -> dict:
    """Rows of the markdown table printed by the tool, by config name."""
    rows = {}
    lines = [line for line in output.splitlines() if line.startswith('| ')]
    cols = [c.strip() for c in lines[0].strip('|').split('|')]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        row = dict(zip(cols, cells))
        rows[row['config'].strip('`')] = row
    return rows


def last_validation(work_dir) -> dict:
    """The last validation record of a run, read without the tool."""
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    records = [json.loads(line) for line in scalars.read_text().splitlines()
               if line.strip()]
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
                'Student': {'Name': 'ResNet-18'},
                'Teacher': {'Name': 'ResNet-34 (random)'},
            },
            'Paper Results': 'not reported',
        })
    metafile = folder / 'metafile.yml'
    metafile.write_text(INDEX_HEADER + yaml.safe_dump(
        {'Models': models}, sort_keys=False))
    (root / 'model-index.yml').write_text(
        'Import:\n  - configs/mmpretrain/metafile.yml\n')
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
    out = run_tool('analysis/collect_results.py', work.parent).stdout
    row = table_rows(out)['tiny_resnet_dist.py']
    expected = last_validation(work)['accuracy/top1']
    assert row['reproduced'] == f'{expected:.2f}'
    assert row['metric'] == 'Top 1 Accuracy'
    assert row['schedule'] == '1 epochs x 4 images (1x4)'
    assert row['teacher'] == 'ImageClassifier (ResNet-34)'
    assert row['student'] == 'ImageClassifier (ResNet-18)'
    assert row['paper'] == '- (not in the model index)'


@pytest.mark.heavy
def test_update_metafiles_writes_only_runs_with_the_recipe(tiny_run,
                                                           tmp_path):
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
    shutil.copytree(work, runs / 'tiny_resnet_dist',
                    ignore=shutil.ignore_patterns('*.pth'))
    copy_run(work, runs / 'other', 'tiny_other_lr')
    copy_run(work, runs / 'longer', 'tiny_longer',
             edit=lambda t: t.replace('max_epochs=1,', 'max_epochs=2,'))

    out = run_tool('analysis/collect_results.py', runs, '--index', index,
                   '--update-metafiles').stdout
    value = last_validation(work)['accuracy/top1']
    rows = table_rows(out)
    assert rows['tiny_resnet_dist.py']['reproduced'] == f'{value:.2f}'
    assert 'recipe differs from the config' in rows['tiny_other_lr.py'][
        'reproduced']
    assert "'lr': 0.1" in rows['tiny_other_lr.py']['reproduced']
    assert 'at epoch 1 of 2' in rows['tiny_longer.py']['reproduced']
    assert 'not written: tiny_other_lr' in out
    assert 'not written: tiny_longer' in out

    text = metafile.read_text()
    assert text.startswith(INDEX_HEADER)
    models = {m['Name']: m for m in yaml.safe_load(text)['Models']}
    assert models['tiny_resnet_dist']['Results'] == [{
        'Task': 'Image Classification',
        'Dataset': 'Shapes',
        'Metrics': {'Top 1 Accuracy': round(value, 2)},
    }]
    assert 'Results' not in models['tiny_other_lr']
    assert 'Results' not in models['tiny_longer']
    # The index still loads as mim loads it, and lists the written result.
    from modelindex.load_model_index import load
    assert load(str(index)).check(silent=True) == []
    listed = run_tool('analysis/collect_results.py', '--index', index,
                      '--all').stdout
    assert table_rows(listed)['tiny_resnet_dist.py']['reproduced'] == \
        f'{round(value, 2)} (from the metafile)'


def test_all_lists_every_indexed_config_as_not_run():
    """Without runs, `--all` gives the README table: every config of the
    installed index, the paper's number for its method, "not run yet"."""
    out = run_tool('analysis/collect_results.py', '--all').stdout
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
    out = run_tool('analysis/collect_results.py', '--all').stdout
    table = '\n'.join(line for line in out.splitlines()
                      if line.startswith('| '))
    assert table in (REPO / 'README.md').read_text()
