"""Collect the results of distillation runs into the README results table.

Reads MMEngine work dirs (as written by ``tools/train.py`` and
``tools/dist_train.sh``): the last validation metrics of the newest run in
``<work_dir>/<timestamp>/vis_data/scalars.json``, the config that run used
(``<timestamp>/vis_data/config.py``, named after the config copy in the work
dir) and the number of processes from its log. Each run is matched with its
entry in mmdist's model index (by config name) for the recipe and the
paper's numbers, and its config is compared with the shipped config's: the
whole config, less what does not define the result (:data:`IGNORED`), so
that a run with another student, data pipeline or schedule is not credited
to the shipped recipe; another student or teacher is the first difference
named. The teacher and student cells describe the run's own config; the
index's names are used only where its models are the shipped config's.

A work dir that cannot be read (a truncated ``scalars.json``, a validation
without metrics, a dumped config that does not load) is skipped with a
warning naming it, and so is a folder without a run (empty, or runs that
stopped before writing ``scalars.json``); the other runs are still reported.

Usage:
    python tools/analysis_tools/collect_results.py WORK_DIR [WORK_DIR ...]
        [--all] [--update-metafiles] [--index PATH] [--json PATH]

A WORK_DIR may also be a folder of work dirs (``work_dirs/``). ``--all``
adds a row for every config of the index that has no run. With
``--update-metafiles`` the metric of every finished run whose recipe equals
its shipped config's is written as that entry's ``Results`` in the metafile
(the file's header comment is kept); a run with another recipe, or an
unfinished one, is listed and left out.
"""
import argparse
import fnmatch
import glob
import json
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Tuple

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
FOLDER_METRICS = {
    folder: METRICS[etype][1]
    for folder, etype in (('mmdet', 'CocoMetric'), ('mmseg', 'IoUMetric'),
                          ('mmpretrain', 'Accuracy'))
}
FOLDER_DIGITS = {'mmdet': 1, 'mmseg': 2, 'mmpretrain': 2}
# What does not define a run's result: config keys (dotted, ``*`` matches
# any part) left out when a run's config is compared with its shipped
# config's, and why. Everything else must be equal for the run's number to
# count as the shipped config's result.
IGNORED = (
    ('work_dir', 'where the run writes'),
    ('launcher', 'how the processes were started'),
    ('resume', 'a resumed run continues the same recipe'),
    ('fault_tolerance', "tools/train.py's crash safety, not the recipe"),
    ('custom_imports', 'module imports'),
    ('default_hooks', 'logging, timing, checkpoints, visualisation'),
    ('log_level', 'logging'),
    ('log_processor', 'logging'),
    ('visualizer', 'logging'),
    ('vis_backends', 'logging'),
    ('env_cfg', 'cuDNN benchmark, worker start method, process group'),
    ('model_wrapper_cfg', 'the DDP wrapper'),
    ('find_unused_parameters', 'the DDP wrapper'),
    ('randomness', 'the seed: another seed is the same recipe'),
    ('auto_scale_lr.enable', 'its effect shows in the images per step'),
    ('train_cfg.val_interval', 'when validation runs'),
    ('train_cfg.val_begin', 'when validation runs'),
    ('train_cfg.dynamic_intervals', 'when validation runs'),
    ('test_dataloader', "the result is the validation's"),
    ('test_evaluator', "the result is the validation's"),
    ('test_cfg', "the result is the validation's"),
    ('data_root', 'where the data is (paths under it are compared relative '
     'to it)'),
    ('*.data_root', 'where the data is'),
    ('*.backend_args', 'file storage'),
    ('*.num_workers', 'data loading speed'),
    ('*.persistent_workers', 'data loading speed'),
    ('*.pin_memory', 'data loading speed'),
    ('*.prefetch_factor', 'data loading speed'),
)
# Hooks that tools/train.py adds and that change nothing in the result.
NO_RESULT_HOOKS = ('PreemptionHook', 'DivergenceGuardHook')
# Loops that train alike (tools/train.py swaps in the resumable one).
EPOCH_LOOPS = ('EpochBasedTrainLoop', 'ResumableEpochBasedTrainLoop')
# Keys that say which models a config trains and distils from (a plain
# config's model is its student): named before the other differences.
MODEL_KEYS = ('model.type', 'model.backbone', 'model.backbone.*',
              'model.student.type', 'model.student.backbone',
              'model.student.backbone.*', 'model.teacher', 'model.teacher.*',
              'model.teacher_ckpt')
# Differences shown in a table cell (all of them are printed for
# --update-metafiles).
SHOWN_DIFFERENCES = 4


class UnreadableRun(ValueError):
    """A work dir whose run cannot be reported; the message says why."""


def default_index() -> str:
    import mmdist
    return osp.join(
        osp.dirname(osp.abspath(mmdist.__file__)), '.mim', 'model-index.yml')


# ---------------------------------------------------------------- the index
def index_root(index_path: str, imports: List[str]) -> str:
    """The folder the index's paths are relative to: the index's own (the
    installed ``.mim`` folder, with ``configs/`` inside), or the one above
    it (the repository's ``configs/model-index.yml``)."""
    folder = osp.dirname(osp.abspath(index_path))
    for root in (folder, osp.dirname(folder)):
        if all(osp.isfile(osp.join(root, rel)) for rel in imports):
            return root
    missing = [rel for rel in imports if not osp.isfile(osp.join(folder, rel))]
    raise FileNotFoundError(
        f'{index_path} imports {missing}, found neither beside it nor in '
        'the folder above it')


def load_index(index_path: str) -> Dict[str, dict]:
    """Entries of the model index by config name (file name without .py),
    each with the path of its metafile and of its config."""
    with open(index_path) as f:
        index = yaml.safe_load(f) or {}
    imports = index.get('Import') or []
    root = index_root(index_path, imports)
    entries = {}
    for rel in imports:
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
def warn(message: str) -> None:
    """A warning on stderr (the table goes to stdout)."""
    print(f'warning: {message}', file=sys.stderr)


def why_no_run(folder: str) -> str:
    """Why a folder holds no run to report.

    Args:
        folder (str): A folder without ``*/vis_data/scalars.json``.

    Returns:
        str: That it is empty, that its runs stopped before logging (a
        timestamp folder with a log or ``vis_data`` but no
        ``scalars.json``), or that it holds no run at all.
    """
    if not os.listdir(folder):
        return 'it is empty'
    # What MMEngine writes as a run starts: <stamp>/<stamp>.log, vis_data/.
    stamps = sorted({
        osp.basename(osp.dirname(p))
        for p in glob.glob(osp.join(folder, '*', '*.log')) +
        glob.glob(osp.join(folder, '*', 'vis_data'))
    })
    if stamps:
        runs = 'its runs' if len(stamps) > 1 else 'its run'
        return (f'{runs} {", ".join(stamps)} wrote no vis_data/scalars.json '
                '(stopped before logging anything?)')
    return 'no <timestamp>/vis_data/scalars.json in it or its sub-folders'


def find_work_dirs(paths: List[str]) -> List[str]:
    """Work dirs among ``paths`` and their sub-folders (two levels).

    A folder named, or met on the way, that holds no run is named in a
    warning saying why (:func:`why_no_run`); the folders inside a work dir
    (its timestamps) or inside a folder already named are not.
    """

    def is_work_dir(path):
        return bool(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))

    found = []
    for path in paths:
        if not osp.isdir(path):
            raise FileNotFoundError(f'{path} is not a folder')
        candidates = [path] + sorted(glob.glob(osp.join(path, '*'))) + \
            sorted(glob.glob(osp.join(path, '*', '*')))
        folders = [c for c in candidates if osp.isdir(c)]
        hits = [c for c in folders if is_work_dir(c)]
        if not hits:
            warn(f'no MMEngine run found in {path}: {why_no_run(path)}')
            continue
        # The folders that hold work dirs: a folder beside those work dirs
        # that is none would otherwise be passed over without a word.
        holders = {osp.normpath(path)} | {
            osp.normpath(c)
            for c in folders if any(h.startswith(c + os.sep) for h in hits)
        }
        for folder in folders:
            if (folder not in hits and osp.normpath(folder) not in holders
                    and osp.normpath(osp.dirname(folder)) in holders):
                warn(f'no MMEngine run found in {folder}: '
                     f'{why_no_run(folder)}')
        found += [h for h in hits if h not in found]
    return found


def read_scalars(path: str) -> List[dict]:
    """The records of a ``scalars.json``.

    A truncated last line (what a kill or a full disk leaves) is dropped
    with a warning.

    Raises:
        UnreadableRun: When another line is not JSON.
    """
    with open(path, errors='replace') as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                warn(f'{path}: its last line is truncated ({error}); '
                     'reading the records before it')
                break
            raise UnreadableRun(f'{path}: line {number} is not JSON '
                                f'({error})') from error
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
    copies = sorted(glob.glob(osp.join(work_dir, '*.py')), key=osp.getmtime)
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


def load_dumped_config(path: str):
    """The config a run used, as MMEngine dumped it.

    Raises:
        UnreadableRun: When it does not load (e.g. ``lr=inf`` is dumped as
            ``inf``, which Python does not read back).
    """
    from mmengine.config import Config
    try:
        return Config.fromfile(path, import_custom_modules=False)
    except Exception as error:  # whatever executing the file raises
        raise UnreadableRun(
            f'its config {path} does not load ({type(error).__name__}: '
            f'{error})') from error


def read_run(work_dir: str) -> Optional[dict]:
    """The newest run of a work dir that validated at least once.

    Raises:
        UnreadableRun: When that run cannot be reported, saying why.
    """
    for run in sorted(
            glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')),
            reverse=True):
        vis = osp.dirname(run)
        stamp_dir = osp.dirname(vis)
        records = read_scalars(run)
        vals = [r for r in records if 'lr' not in r and 'loss' not in r]
        if not vals:
            continue
        last = vals[-1]
        if not any(k not in ('step', 'time', 'data_time') for k in last):
            raise UnreadableRun(
                f'its last validation (step {last.get("step")}, in {run}) '
                'returned no metrics (a diverged run?)')
        dumped = osp.join(vis, 'config.py')
        cfg = load_dumped_config(dumped)
        stamp = osp.basename(stamp_dir)
        world = world_size(osp.join(stamp_dir, f'{stamp}.log'))
        etype = evaluator_type(cfg)
        key, label, scale, digits = METRICS.get(etype, (None, None, 1.0, 2))
        if key not in last:
            key = next(
                k for k in last if k not in ('step', 'time', 'data_time'))
            label = key
        by_epoch = cfg.train_cfg.get('by_epoch', 'max_epochs' in cfg.train_cfg)
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
    """``Type (Backbone-depth)`` of a model dict (``-arch`` for backbones
    sized by ``arch``)."""
    if isinstance(model, str):
        return model
    if not isinstance(model, dict):
        return '?'
    backbone = model.get('backbone') or {}
    arch = str(backbone.get('type', ''))
    if 'depth' in backbone:
        arch += f'-{backbone["depth"]}'
    elif isinstance(backbone.get('arch'), str):
        arch += f'-{backbone["arch"]}'
    return f'{model.get("type", "?")} ({arch})' if arch else str(
        model.get('type', '?'))


def model_parts(cfg: dict) -> Tuple[object, object, Optional[str]]:
    """The student, the teacher (``None`` without one) and the teacher's
    checkpoint of a config dict; a plain config's model is its student."""
    from mmdist.utils import is_distiller
    model = cfg.get('model') or {}
    if not is_distiller(model):
        return model, None, None
    return model.get('student'), model.get('teacher'), model.get(
        'teacher_ckpt')


def describe_teacher(teacher, checkpoint: Optional[str]) -> str:
    """``Type (Backbone-depth), <weights file>`` of a teacher.

    Args:
        teacher (str | dict | None): A distiller's ``teacher``: its config
            path (read for the model it builds) or model dict.
        checkpoint (str, optional): Its ``teacher_ckpt``.

    Returns:
        str: The summary, ``- (student alone)`` without a teacher; a config
        that does not load here (a path of another machine) is named by its
        file name.
    """
    if teacher is None:
        return '- (student alone)'
    from mmdist.distillers.teacher import load_teacher_config
    try:
        summary = model_summary(load_teacher_config(teacher).to_dict())
    except Exception:  # whatever executing the teacher's config raises
        summary = osp.basename(teacher) if isinstance(teacher, str) else '?'
    weights = osp.basename(str(checkpoint)) if checkpoint else \
        'random weights'
    return f'{summary}, {weights}'


def _data_roots(node, found: set) -> set:
    """The string values of every ``data_root`` key in a config dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'data_root' and isinstance(value, str) and value:
                found.add(value.rstrip('/'))
            else:
                _data_roots(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _data_roots(value, found)
    return found


def _relative(value, roots: List[str]):
    """A path under one of ``roots`` as ``<data_root>/...``; a tuple as a
    list; lists of such values item by item; anything else as it is."""
    if isinstance(value, str):
        for root in roots:
            if value == root or value.startswith(root + '/'):
                return '<data_root>' + value[len(root):]
        return value
    if isinstance(value, (list, tuple)):
        return [_relative(v, roots) for v in value]
    return value


def flatten(node, roots: List[str], prefix: str = '') -> Dict[str, object]:
    """Dotted key -> value of every setting of a config dict: dicts, and
    lists holding dicts or lists (pipelines, schedulers), are followed (list
    items by index); other values are leaves (a tuple as a list, a path
    under a ``data_root`` relative to it)."""
    if isinstance(node, dict) and node:
        items = node.items()
    elif isinstance(node, (list, tuple)) and any(
            isinstance(v, (dict, list, tuple)) for v in node):
        items = enumerate(node)
    else:
        return {prefix[:-1]: _relative(node, roots)}
    out = {}
    for key, value in items:
        out.update(flatten(value, roots, f'{prefix}{key}.'))
    return out


def ignored(key: str) -> bool:
    """Whether a dotted key is among :data:`IGNORED` (or under one)."""
    return any(
        fnmatch.fnmatchcase(key, pattern)
        or fnmatch.fnmatchcase(key, pattern + '.*') for pattern, _ in IGNORED)


def comparable(cfg: dict) -> Dict[str, object]:
    """The settings of a config that define its result, flattened.

    ``tools/train.py``'s own changes are undone: its resumable epoch loop is
    the stock one, and its preemption and divergence hooks are dropped; a
    resumed run's ``load_from`` is the checkpoint it resumed from.
    """
    cfg = dict(cfg)
    train_cfg = dict(cfg.get('train_cfg') or {})
    loop = str(train_cfg.pop('type', '')).split('.')[-1]
    by_epoch = train_cfg.pop('by_epoch', False)
    if loop in EPOCH_LOOPS or (not loop and by_epoch):
        loop = 'EpochBasedTrainLoop'
    elif not loop:
        loop = 'IterBasedTrainLoop'
    cfg['train_cfg'] = dict(train_cfg, type=loop)
    cfg['custom_hooks'] = [
        hook for hook in cfg.get('custom_hooks') or []
        if str(hook.get('type', '')).split('.')[-1] not in NO_RESULT_HOOKS
    ]
    if cfg.get('resume'):
        cfg.pop('load_from', None)
    roots = sorted(_data_roots(cfg, set()), key=len, reverse=True)
    return {k: v for k, v in flatten(cfg, roots).items() if not ignored(k)}


def names_model(key: str) -> bool:
    """Whether a dotted key is among :data:`MODEL_KEYS`."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MODEL_KEYS)


def config_differences(used: dict, shipped: dict) -> List[str]:
    """``key: value (shipped value)`` for every setting that defines the
    result and differs between two config dicts; those of the models
    (:data:`MODEL_KEYS`) first."""
    a, b = comparable(used), comparable(shipped)
    missing = '<absent>'
    keys = sorted(set(a) | set(b), key=lambda k: (not names_model(k), k))
    return [
        f'{key}: {a.get(key, missing)!r} (shipped {b.get(key, missing)!r})'
        for key in keys if a.get(key, missing) != b.get(key, missing)
    ]


def _settings(node) -> Dict[str, object]:
    """A config dict's part flattened, less what :data:`IGNORED` leaves
    out."""
    return {k: v for k, v in flatten(node, []).items() if not ignored(k)}


def same_models(used: dict, shipped: dict) -> Tuple[bool, bool]:
    """Whether two config dicts train the same student (type and backbone)
    and distil from the same teacher (config and checkpoint)."""
    student, teacher, ckpt = model_parts(used)
    s_student, s_teacher, s_ckpt = model_parts(shipped)

    def identity(model):
        if not isinstance(model, dict):
            return _settings(dict(model=model))
        return _settings(
            dict(type=model.get('type'), backbone=model.get('backbone')))

    same_teacher = _settings(dict(t=teacher, c=ckpt)) == _settings(
        dict(t=s_teacher, c=s_ckpt))
    return identity(student) == identity(s_student), same_teacher


def model_differences(used: dict, shipped: dict) -> List[str]:
    """``student: ... (shipped ...)`` and ``teacher: ... (shipped ...)``
    where two config dicts' models differ in type, backbone, depth or
    teacher checkpoint: the differences to read first."""
    same_student, same_teacher = same_models(used, shipped)
    student, teacher, ckpt = model_parts(used)
    s_student, s_teacher, s_ckpt = model_parts(shipped)
    diffs = []
    mine, theirs = model_summary(student), model_summary(s_student)
    if not same_student and mine != theirs:
        diffs.append(f'student: {mine} (shipped {theirs})')
    if not same_teacher:
        mine, theirs = describe_teacher(teacher, ckpt), describe_teacher(
            s_teacher, s_ckpt)
        if mine != theirs:
            diffs.append(f'teacher: {mine} (shipped {theirs})')
    return diffs


def shipped_config(entry: dict) -> dict:
    """The config dict of an index entry, its teacher path resolved."""
    from mmengine.config import Config

    from mmdist.utils import resolve_teacher_paths
    shipped_cfg = Config.fromfile(
        entry['config_path'], import_custom_modules=False)
    # As the tools do, so that the run's absolute teacher path compares.
    resolve_teacher_paths(shipped_cfg, entry['config_path'])
    return shipped_cfg.to_dict()


def recipe_differences(run: dict,
                       entry: dict,
                       shipped: Optional[dict] = None) -> List[str]:
    """How the run's recipe differs from its shipped config's: another
    student or teacher first (:func:`model_differences`), then every
    setting (:func:`config_differences`).

    Args:
        run (dict): A run, as :func:`read_run` returns it.
        entry (dict): Its entry of the model index.
        shipped (dict, optional): The entry's config dict, when loaded
            already (:func:`shipped_config`).

    Returns:
        list[str]: The differences, the models' first.
    """
    if shipped is None:
        shipped = shipped_config(entry)
    used = run['cfg'].to_dict()
    diffs = model_differences(used, shipped) + config_differences(
        used, shipped)
    batch = entry['model']['Metadata'].get('Batch Size')
    if batch is not None and run['world_size'] is not None:
        total = run['world_size'] * used['train_dataloader']['batch_size']
        if total != batch:
            diffs.append(f'{total} images per step (recipe: {batch})')
    return diffs


# ---------------------------------------------------------------- output
def table(rows: List[dict]) -> str:
    """The markdown table; with a ``work dir`` column when it has runs
    (two runs of one config are told apart by it)."""
    cols = ('config', 'teacher', 'student', 'schedule', 'metric', 'paper',
            'reproduced')
    if any(row.get('work_dir') for row in rows):
        cols += ('work dir', )
        rows = [
            dict(row, **{'work dir': row.get('work_dir') or '-'})
            for row in rows
        ]
    lines = [
        '| ' + ' | '.join(cols) + ' |',
        '| ' + ' | '.join('---' for _ in cols) + ' |'
    ]
    for row in rows:
        # A `|` in a cell (a regex among the differences) would end it.
        cells = [str(row[c]).replace('|', '\\|') for c in cols]
        lines.append('| ' + ' | '.join(cells) + ' |')
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


def summarise(differences: List[str]) -> str:
    """The first :data:`SHOWN_DIFFERENCES` differences, and how many more."""
    shown = '; '.join(differences[:SHOWN_DIFFERENCES])
    more = len(differences) - SHOWN_DIFFERENCES
    return shown + (f'; and {more} more' if more > 0 else '')


def build_rows(runs: List[dict], entries: Dict[str, dict],
               include_all: bool) -> List[dict]:
    rows = []
    for run in runs:
        entry = entries.get(run['name'])
        notes = []
        if not run['finished']:
            unit = 'epoch' if run['by_epoch'] else 'iter'
            notes.append(f'at {unit} {run["step"]} of {run["total"]}')
        used = run['cfg'].to_dict()
        # The cells describe the models the run's own config trained with;
        # the index's names only where they are the shipped config's.
        student_part, teacher_part, ckpt = model_parts(used)
        teacher = describe_teacher(teacher_part, ckpt)
        student = model_summary(student_part)
        if entry is not None:
            shipped = shipped_config(entry)
            run['differences'] = recipe_differences(run, entry, shipped)
            if run['differences']:
                notes.append('recipe differs from the config: ' +
                             summarise(run['differences']))
            same_student, same_teacher = same_models(used, shipped)
            entry_teacher, entry_student, _ = entry_cells(entry)
            teacher = entry_teacher if same_teacher else teacher
            student = entry_student if same_student else student
        else:
            run['differences'] = []
        value = f'{run["value"]:.{run["digits"]}f}'
        rows.append(
            dict(
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
            rows.append(
                dict(
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
        meta,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
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
            model['Results'] = [
                dict(
                    Task=TASKS.get(entry['folder'], entry['folder']),
                    Dataset=model['Metadata']['Training Data'],
                    Metrics={run['metric']: run['value']})
            ]
            written += 1
            print(f'written: {run["name"]}: {run["metric"]} {run["value"]} '
                  f'-> {path}')
        write_metafile(path, meta)
    return written


def parse_args():
    parser = argparse.ArgumentParser(
        description='Print the results table of distillation runs.')
    parser.add_argument('work_dirs', nargs='*', help='MMEngine work dirs')
    parser.add_argument(
        '--index',
        help='model-index.yml (default: the '
        'installed mmdist package\'s)')
    parser.add_argument(
        '--all',
        action='store_true',
        help='also list the configs of the index not run')
    parser.add_argument(
        '--update-metafiles',
        action='store_true',
        help='write the runs\' metrics into the metafiles')
    parser.add_argument('--json', help='also write the rows to this file')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import mmdist  # noqa: F401  (resolves mmdist:: in shipped configs)
    entries = load_index(args.index or default_index())
    runs = []
    for work_dir in find_work_dirs(args.work_dirs):
        try:
            run = read_run(work_dir)
        except UnreadableRun as error:
            warn(f'skipping {work_dir}: {error}')
            continue
        if run is None:
            warn(f'{work_dir} has no validation result yet')
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
