"""Collect the results of distillation runs into the README results table.

Reads MMEngine work dirs (as written by ``tools/train.py`` and
``tools/dist_train.sh``): the last validation metrics of the newest run in
``<work_dir>/<timestamp>/vis_data/scalars.json``, the config that run used
(``<timestamp>/vis_data/config.py``, named after the config copy in the work
dir) and the number of processes from its log. Each run is matched with its
entry in mmdist's model index (by config name) for the teacher, the student,
the recipe and the paper's numbers, and its recipe is compared with the
shipped config's.

Usage:
    python tools/analysis/collect_results.py WORK_DIR [WORK_DIR ...]
        [--all] [--update-metafiles] [--index PATH] [--json PATH]

A WORK_DIR may also be a folder of work dirs (``work_dirs/``). ``--all``
adds a row for every config of the index that has no run. With
``--update-metafiles`` the metric of every finished run whose recipe equals
its shipped config's is written as that entry's ``Results`` in the metafile
(the file's header comment is kept); a run with another recipe, or an
unfinished one, is listed and left out.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional

import yaml

NOT_RUN = 'not run yet'
TASKS = {
    'mmdet': 'Object Detection',
    'mmseg': 'Semantic Segmentation',
    'mmpretrain': 'Image Classification',
}
# Evaluator type -> (key in scalars.json, name in metafiles, scale, digits).
METRICS = {
    'CocoMetric': ('coco/bbox_mAP', 'box AP', 100.0, 1),
    'IoUMetric': ('mIoU', 'mIoU', 1.0, 2),
    'Accuracy': ('accuracy/top1', 'Top 1 Accuracy', 1.0, 2),
}
FOLDER_METRICS = {folder: METRICS[etype][1] for folder, etype in (
    ('mmdet', 'CocoMetric'), ('mmseg', 'IoUMetric'),
    ('mmpretrain', 'Accuracy'))}
FOLDER_DIGITS = {'mmdet': 1, 'mmseg': 2, 'mmpretrain': 2}
# Recipe settings a run must share with its shipped config for its number
# to count as this config's result.
RECIPE_KEYS = ('train_cfg.max_epochs', 'train_cfg.max_iters',
               'optim_wrapper.optimizer', 'optim_wrapper.paramwise_cfg',
               'param_scheduler', 'model.teacher', 'model.teacher_ckpt',
               'model.distill_terms')


def default_index() -> str:
    import mmdist
    return osp.join(osp.dirname(osp.abspath(mmdist.__file__)), '.mim',
                    'model-index.yml')


# ---------------------------------------------------------------- the index
def load_index(index_path: str) -> Dict[str, dict]:
    """Entries of the model index by config name (file name without .py),
    each with the path of its metafile and of its config."""
    root = osp.dirname(index_path)  # the .mim folder: imports are relative
    with open(index_path) as f:
        index = yaml.safe_load(f) or {}
    entries = {}
    for rel in index.get('Import') or []:
        meta_path = osp.join(root, rel)
        with open(meta_path) as f:
            meta = yaml.safe_load(f) or {}
        for model in meta.get('Models') or []:
            name = osp.splitext(osp.basename(model['Config']))[0]
            entries[name] = dict(
                model=model,
                metafile=meta_path,
                config_path=osp.join(root, model['Config']),
                folder=model['Config'].split('/')[-2])
    return entries


def paper_cell(entry: Optional[dict]) -> str:
    """The paper's number for the entry's method, and its student alone."""
    if entry is None:
        return '- (not in the model index)'
    paper = entry['model'].get('Paper Results')
    method = entry['model']['Metadata'].get('Distillation')
    if not isinstance(paper, dict) or method is None:
        return str(paper or 'not reported')
    digits = FOLDER_DIGITS.get(entry['folder'], 2)

    def fmt(value):
        return f'{value:.{digits}f}' if isinstance(value,
                                                   (int, float)) else value

    value = paper.get(method, 'not reported')
    sep = ' ' if isinstance(value, (int, float)) else ': '
    return f'{method}{sep}{fmt(value)}; student alone {fmt(paper["Student"])}'


def recipe_schedule(metadata: dict) -> str:
    if 'Epochs' in metadata:
        length = f'{metadata["Epochs"]} epochs'
    else:
        length = f'{metadata["Iterations"] // 1000}k iters'
    return (f'{length} x {metadata["Batch Size"]} images '
            f'({metadata["Training Resources"]})')


# ---------------------------------------------------------------- the runs
def find_work_dirs(paths: List[str]) -> List[str]:
    """Work dirs among ``paths`` and their sub-folders (two levels)."""

    def is_work_dir(path):
        return bool(glob.glob(osp.join(path, '*', 'vis_data',
                                       'scalars.json')))

    found = []
    for path in paths:
        if not osp.isdir(path):
            raise FileNotFoundError(f'{path} is not a folder')
        candidates = [path] + sorted(glob.glob(osp.join(path, '*'))) + \
            sorted(glob.glob(osp.join(path, '*', '*')))
        hits = [c for c in candidates if osp.isdir(c) and is_work_dir(c)]
        if not hits:
            print(f'warning: no MMEngine run found in {path}',
                  file=sys.stderr)
        found += [h for h in hits if h not in found]
    return found


def read_scalars(path: str) -> List[dict]:
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def world_size(log_path: str) -> Optional[int]:
    if not osp.isfile(log_path):
        return None
    with open(log_path, errors='replace') as f:
        for line in f:
            match = re.search(r'GPU number: (\d+)', line)
            if match:
                return int(match.group(1))
    return None


def config_name(work_dir: str, dumped: str) -> str:
    """The run's config name: the config copy MMEngine saves in the work
    dir (named after the original file); the one equal to the dumped config
    when there are several."""
    copies = sorted(glob.glob(osp.join(work_dir, '*.py')),
                    key=osp.getmtime)
    if not copies:
        return osp.splitext(osp.basename(work_dir.rstrip('/')))[0]
    with open(dumped) as f:
        text = f.read()
    for path in reversed(copies):
        with open(path) as f:
            if f.read() == text:
                return osp.splitext(osp.basename(path))[0]
    return osp.splitext(osp.basename(copies[-1]))[0]


def evaluator_type(cfg) -> Optional[str]:
    evaluator = cfg.get('val_evaluator')
    if isinstance(evaluator, (list, tuple)):
        evaluator = evaluator[0] if evaluator else None
    if not isinstance(evaluator, dict):
        return None
    return str(evaluator.get('type', '')).split('.')[-1]


def read_run(work_dir: str) -> Optional[dict]:
    """The newest run of a work dir that validated at least once."""
    from mmengine.config import Config
    for run in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                         'scalars.json')), reverse=True):
        vis = osp.dirname(run)
        stamp_dir = osp.dirname(vis)
        records = read_scalars(run)
        vals = [r for r in records if 'lr' not in r and 'loss' not in r]
        if not vals:
            continue
        dumped = osp.join(vis, 'config.py')
        cfg = Config.fromfile(dumped, import_custom_modules=False)
        stamp = osp.basename(stamp_dir)
        world = world_size(osp.join(stamp_dir, f'{stamp}.log'))
        last = vals[-1]
        etype = evaluator_type(cfg)
        key, label, scale, digits = METRICS.get(etype, (None, None, 1.0, 2))
        if key not in last:
            key = next(k for k in last
                       if k not in ('step', 'time', 'data_time'))
            label = key
        by_epoch = cfg.train_cfg.get('by_epoch',
                                     'max_epochs' in cfg.train_cfg)
        total = cfg.train_cfg.get('max_epochs' if by_epoch else 'max_iters')
        return dict(
            work_dir=work_dir,
            stamp=stamp,
            name=config_name(work_dir, dumped),
            cfg=cfg,
            world_size=world,
            metric_key=key,
            metric=label,
            value=round(float(last[key]) * scale, digits),
            digits=digits,
            step=last.get('step'),
            by_epoch=by_epoch,
            total=total,
            finished=last.get('step') == total)
    return None


def run_schedule(run: dict) -> str:
    cfg = run['cfg']
    per_gpu = cfg.train_dataloader.batch_size
    world = run['world_size']
    unit = 'epochs' if run['by_epoch'] else 'iters'
    total = run['total']
    if not run['by_epoch'] and total and total % 1000 == 0:
        total, unit = f'{total // 1000}k', 'iters'
    if world is None:
        return f'{total} {unit} x ? images (? x {per_gpu})'
    return f'{total} {unit} x {world * per_gpu} images ({world}x{per_gpu})'


def model_summary(model) -> str:
    if isinstance(model, str):
        return model
    if not isinstance(model, dict):
        return '?'
    backbone = model.get('backbone') or {}
    arch = str(backbone.get('type', ''))
    if 'depth' in backbone:
        arch += f'-{backbone["depth"]}'
    return f'{model.get("type", "?")} ({arch})' if arch else str(
        model.get('type', '?'))


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split('.'):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def recipe_differences(run: dict, entry: dict) -> List[str]:
    """How the run's recipe differs from its shipped config's."""
    from mmengine.config import Config
    shipped = Config.fromfile(entry['config_path'],
                              import_custom_modules=False).to_dict()
    used = run['cfg'].to_dict()
    diffs = []
    for key in RECIPE_KEYS:
        a, b = _get(used, key), _get(shipped, key)
        if a != b:
            diffs.append(f'{key}: {a!r} (shipped {b!r})')
    batch = entry['model']['Metadata'].get('Batch Size')
    if batch is not None and run['world_size'] is not None:
        total = run['world_size'] * used['train_dataloader']['batch_size']
        if total != batch:
            diffs.append(f'{total} images per step (recipe: {batch})')
    return diffs


# ---------------------------------------------------------------- output
def table(rows: List[dict]) -> str:
    cols = ('config', 'teacher', 'student', 'schedule', 'metric', 'paper',
            'reproduced')
    lines = ['| ' + ' | '.join(cols) + ' |',
             '| ' + ' | '.join('---' for _ in cols) + ' |']
    for row in rows:
        lines.append('| ' + ' | '.join(str(row[c]) for c in cols) + ' |')
    return '\n'.join(lines)


def entry_cells(entry: dict) -> tuple:
    """Teacher, student and metric cells of an index entry."""
    meta = entry['model']['Metadata']
    metric = FOLDER_METRICS.get(entry['folder'], '?')
    teacher = meta.get('Teacher')
    if teacher is None:
        return ('- (student alone)',
                meta.get('Architecture', entry['model']['Name']), metric)
    zoo = teacher.get('Metrics')
    if isinstance(zoo, dict) and metric in zoo:
        teacher_cell = f'{teacher["Name"]} ({zoo[metric]})'
    else:
        teacher_cell = teacher['Name']
    return teacher_cell, meta['Student']['Name'], metric


def recorded_result(entry: dict, metric: str) -> str:
    """The result already in the entry's metafile, or NOT_RUN."""
    for result in entry['model'].get('Results') or []:
        value = (result.get('Metrics') or {}).get(metric)
        if value is not None:
            return f'{value} (from the metafile)'
    return NOT_RUN


def build_rows(runs: List[dict], entries: Dict[str, dict],
               include_all: bool) -> List[dict]:
    rows = []
    for run in runs:
        entry = entries.get(run['name'])
        notes = []
        if not run['finished']:
            unit = 'epoch' if run['by_epoch'] else 'iter'
            notes.append(f'at {unit} {run["step"]} of {run["total"]}')
        if entry is not None:
            run['differences'] = recipe_differences(run, entry)
            if run['differences']:
                notes.append('recipe differs from the config: ' +
                             '; '.join(run['differences']))
            teacher, student, _ = entry_cells(entry)
        else:
            run['differences'] = []
            teacher = model_summary(run['cfg'].model.get('teacher'))
            student = model_summary(run['cfg'].model.get('student',
                                                         run['cfg'].model))
        value = f'{run["value"]:.{run["digits"]}f}'
        rows.append(dict(
            config=f'`{run["name"]}.py`',
            teacher=teacher,
            student=student,
            schedule=run_schedule(run),
            metric=run['metric'],
            paper=paper_cell(entry),
            reproduced=value + (f' ({"; ".join(notes)})' if notes else ''),
            work_dir=run['work_dir']))
    if include_all:
        seen = {run['name'] for run in runs}
        for name, entry in entries.items():
            if name in seen:
                continue
            teacher, student, metric = entry_cells(entry)
            rows.append(dict(
                config=f'`{name}.py`',
                teacher=teacher,
                student=student,
                schedule=recipe_schedule(entry['model']['Metadata']),
                metric=metric,
                paper=paper_cell(entry),
                reproduced=recorded_result(entry, metric),
                work_dir=None))
    return rows


# ---------------------------------------------------------------- metafiles
def write_metafile(path: str, meta: dict) -> None:
    """Rewrite a metafile, keeping its leading comment block."""
    with open(path) as f:
        header = []
        for line in f:
            if not line.startswith('#'):
                break
            header.append(line)
    text = ''.join(header) + yaml.safe_dump(
        meta, sort_keys=False, default_flow_style=False, allow_unicode=True,
        width=1000)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def update_metafiles(runs: List[dict], entries: Dict[str, dict]) -> int:
    """Write each eligible run's metric as its entry's Results; return the
    number of entries written."""
    by_file: Dict[str, List[dict]] = {}
    for run in runs:
        entry = entries.get(run['name'])
        reason = None
        if entry is None:
            reason = 'its config is not in the model index'
        elif not run['finished']:
            reason = f'unfinished (last validation at step {run["step"]} ' \
                f'of {run["total"]})'
        elif run['differences']:
            reason = 'its recipe differs from the config: ' + '; '.join(
                run['differences'])
        if reason:
            print(f'not written: {run["name"]} ({run["work_dir"]}): '
                  f'{reason}')
            continue
        by_file.setdefault(entry['metafile'], []).append(run)
    written = 0
    for path, file_runs in by_file.items():
        with open(path) as f:
            meta = yaml.safe_load(f)
        for run in file_runs:
            entry = entries[run['name']]
            model = next(m for m in meta['Models']
                         if m['Config'] == entry['model']['Config'])
            model['Results'] = [dict(
                Task=TASKS.get(entry['folder'], entry['folder']),
                Dataset=model['Metadata']['Training Data'],
                Metrics={run['metric']: run['value']})]
            written += 1
            print(f'written: {run["name"]}: {run["metric"]} {run["value"]} '
                  f'-> {path}')
        write_metafile(path, meta)
    return written


def parse_args():
    parser = argparse.ArgumentParser(
        description='Print the results table of distillation runs.')
    parser.add_argument('work_dirs', nargs='*', help='MMEngine work dirs')
    parser.add_argument('--index', help='model-index.yml (default: the '
                        'installed mmdist package\'s)')
    parser.add_argument('--all', action='store_true',
                        help='also list the configs of the index not run')
    parser.add_argument('--update-metafiles', action='store_true',
                        help='write the runs\' metrics into the metafiles')
    parser.add_argument('--json', help='also write the rows to this file')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import mmdist  # noqa: F401  (resolves mmdist:: in shipped configs)
    entries = load_index(args.index or default_index())
    runs = []
    for work_dir in find_work_dirs(args.work_dirs):
        run = read_run(work_dir)
        if run is None:
            print(f'warning: {work_dir} has no validation result yet',
                  file=sys.stderr)
            continue
        runs.append(run)
    rows = build_rows(runs, entries, args.all)
    print(table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=2)
    if args.update_metafiles:
        update_metafiles(runs, entries)


if __name__ == '__main__':
    main()
