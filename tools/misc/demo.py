"""KD vs DIST on built-in synthetic data, end to end on a CPU.

For each task (``det``: RetinaNet on COCO-layout shapes; ``seg``: FCN on
Cityscapes-layout scenes) the demo

1. generates the data set (fixed seed; reused by a rerun that asks for the
   same data),
2. trains a stronger teacher once (seed 0; reused by a rerun that asks for
   the same data and schedule),
3. for every seed, trains the student alone, with KD and with DIST, with the
   same schedule and data (the seed sets initialisation and data order),
4. evaluates every model with the stock evaluators (CocoMetric bbox mAP,
   IoUMetric mIoU) and measures the teacher-student discrepancy,

then writes ``report.md``, ``report.json`` and PNG plots to the work dir
and prints the table: with several seeds, the mean and standard deviation
per variant, whether DIST differs from KD and from the student alone by more
than their spread (the sum of the two standard deviations, a rule of thumb
rather than a significance test) and, since every seed trains all three
students, the per-seed differences. Every number comes from the run.

Usage:
    python tools/misc/demo.py [--task det|seg|all] [--iters 250]
        [--teacher-iters N] [--images 400] [--seeds 1]
        [--work-dir work_dirs/demo] [--retrain-teacher]
        [--teacher-precision float32|bf16]
"""
import argparse
import json
import os
import os.path as osp
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmdist  # noqa: F401  (registers mmdist, safe checkpoint loading)
from mmdist.analysis import measure_discrepancy
from mmdist.testing import make_cityscapes, make_coco_detection
from mmdist.utils.student import build_distiller_with_student

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIGS = osp.join(REPO, 'configs', 'demo')
TASKS = {
    # teacher_iters: a detector trained from scratch needs about 1,000
    # iterations on this data to pass 0.3 bbox mAP (0.30 at 400 of 1,000).
    'det':
    dict(
        metric='coco/bbox_mAP',
        metric_name='bbox mAP',
        scope='mmdet',
        digits=3,
        teacher_iters=1000,
        models='RetinaNet; student ResNet-18 (base width 16) with a '
        '2-conv head of 64 channels, teacher ResNet-34 (base width '
        '32) with a 4-conv head of 128 channels; both from scratch',
        data='COCO layout, 5 shape classes, 128x128 images with up '
        'to 6 shapes in random colours and sizes on a noisy '
        'gradient; no clutter strokes and no occlusion (boxes do '
        'not overlap), so that a detector trained from scratch on a '
        'CPU learns it'),
    'seg':
    dict(
        metric='mIoU',
        metric_name='mIoU',
        scope='mmseg',
        digits=2,
        teacher_iters=500,
        models='student FCN on a ResNetV1c-18 (base width 16), '
        'teacher DeepLabV3 (ASPP head) on a ResNetV1c-34 (base width '
        '32); both from scratch',
        data='Cityscapes layout (labelTrainIds), 128x64 scenes of '
        'four background bands under up to 8 shapes, with clutter '
        'strokes and occlusion'),
}
# Bump when a generator's output changes, so that old data and the teacher
# trained on it are not reused.
DATA_VERSION = 2
STUDENTS = ('student', 'kd', 'dist')
VARIANTS = ('teacher', ) + STUDENTS
LABELS = dict(
    teacher='teacher',
    student='student alone',
    kd='student + KD',
    dist='student + DIST')
LOSS_KEYS = dict(kd='loss_kd', dist='loss_dist')
# What each distillation loss measures: losses of different kinds get
# panels of their own, never one axis.
LOSS_KINDS = dict(kd='KL(teacher ‖ student), KD', dist='1 - Pearson, DIST')
# One colour per variant in every plot (matplotlib's tab10 colours).
COLORS = dict(
    teacher='#7f7f7f', student='#1f77b4', kd='#ff7f0e', dist='#2ca02c')


def make_data(task: str, root: str, images: int) -> Tuple[str, str]:
    """Generate the task's data set, unless the folder holds this one.

    A marker file names the data set in the folder; other data there is
    removed first, so that no image of an earlier data set is left behind.

    Args:
        task (str): ``'det'`` or ``'seg'``.
        root (str): Folder of the demo's data sets.
        images (int): Training images.

    Returns:
        tuple[str, str]: The data root and a tag naming this data set.
    """
    folder = osp.join(root, 'coco' if task == 'det' else 'cityscapes')
    tag = f'{task}-v{DATA_VERSION}-{images}'
    marker = osp.join(folder, '.complete')
    if read_text(marker) != tag:
        print(f'[{task}] generating {images} training images in {folder}')
        shutil.rmtree(folder, ignore_errors=True)
        if task == 'det':
            # No clutter strokes and no occlusion: a detector trained from
            # scratch for a few hundred iterations learns this well enough
            # to be a teacher worth distilling from.
            make_coco_detection(
                folder,
                num_train=images,
                num_val=max(8, images // 4),
                size=(128, 128),
                max_objects=6,
                seed=0,
                clutter=False,
                occlusion=False)
        else:
            make_cityscapes(
                folder,
                num_train=images,
                num_val=max(4, images // 8),
                size=(128, 64),
                max_objects=8,
                seed=0)
        with open(marker, 'w') as f:
            f.write(tag)
    return folder + '/', tag


def read_text(path: str) -> str:
    """A small file's text, or ``''`` if there is none."""
    if not osp.isfile(path):
        return ''
    with open(path) as f:
        return f.read()


def demo_config(task: str,
                variant: str,
                data_root: str,
                work_dir: str,
                iters: int,
                teacher_ckpt: str,
                seed: int = 0,
                teacher_precision: Optional[str] = None) -> Config:
    """The demo config of one run, with its data, schedule and seed.

    Args:
        task (str): ``'det'`` or ``'seg'``.
        variant (str): One of :data:`VARIANTS`.
        data_root (str): The data set's root folder.
        work_dir (str): The run's work dir.
        iters (int): Training iterations (cosine schedule, 10% warm-up).
        teacher_ckpt (str): The teacher's weights (KD and DIST runs).
        seed (int): The run's random seed.
        teacher_precision (str, optional): The distillers'
            ``teacher_precision``; None keeps the configs' (``'bf16'``).

    Returns:
        Config: The config to hand to ``Runner.from_cfg``.
    """
    name = {
        'teacher': 'teacher',
        'student': 'student',
        'kd': 'student_kd',
        'dist': 'student_dist'
    }[variant]
    cfg = Config.fromfile(osp.join(DEMO_CONFIGS, f'{task}_{name}.py'))
    cfg.work_dir = work_dir
    cfg.experiment_name = f'demo_{task}_{variant}_seed{seed}'
    cfg.randomness = dict(seed=seed)
    # The stock runtimes name every visualizer 'visualizer', a process-wide
    # singleton: one name per run keeps each run's scalars in its own dir.
    cfg.visualizer.name = cfg.experiment_name
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = data_root
    if task == 'det':
        ann = osp.join(data_root, 'annotations', 'instances_val2017.json')
        cfg.val_evaluator.ann_file = ann
        cfg.test_evaluator.ann_file = ann
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = max(1, iters // 5)
    warmup = max(1, iters // 10)
    cfg.param_scheduler = [
        dict(
            type='LinearLR',
            start_factor=0.1,
            by_epoch=False,
            begin=0,
            end=warmup),
        dict(
            type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=iters)
    ]
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = max(1, iters // 15)
    if variant in ('kd', 'dist'):
        cfg.model.teacher_ckpt = teacher_ckpt
        if teacher_precision is not None:
            cfg.model.teacher_precision = teacher_precision
    return cfg


def read_scalars(work_dir: str) -> list:
    """The train/val scalars the LocalVisBackend wrote, in order."""
    found = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            found.append(osp.join(root, 'scalars.json'))
    if not found:
        return []
    with open(sorted(found)[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def train(cfg: Config) -> float:
    """Train one run in a fresh work dir; returns its wall time (s)."""
    shutil.rmtree(cfg.work_dir, ignore_errors=True)
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    return time.perf_counter() - start


def run_result(task: str, variant: str, work_dir: str, iters: int,
               seconds: float) -> dict:
    """One run's final metric, validation curve and distillation loss.

    Args:
        task (str): ``'det'`` or ``'seg'``.
        variant (str): One of :data:`VARIANTS`.
        work_dir (str): The run's work dir.
        iters (int): The run's training iterations.
        seconds (float): The run's training wall time.

    Returns:
        dict: ``metric``, ``curve`` and ``loss`` (``[step, value]`` lists),
        ``train_seconds``, ``iters`` and ``checkpoint``.
    """
    metric = TASKS[task]['metric']
    scalars = read_scalars(work_dir)
    curve = [(s['step'], s[metric]) for s in scalars if metric in s]
    key = LOSS_KEYS.get(variant)
    loss = [(s['step'], s[key]) for s in scalars if key and key in s]
    return dict(
        metric=curve[-1][1] if curve else float('nan'),
        curve=curve,
        loss=loss,
        train_seconds=seconds,
        iters=iters,
        checkpoint=osp.join(work_dir, f'iter_{iters}.pth'))


def teacher_iters(task: str, args: argparse.Namespace) -> int:
    """The teacher's schedule: ``--teacher-iters`` or the task's default."""
    return args.teacher_iters or TASKS[task]['teacher_iters']


def train_teacher(task: str, data_root: str, data_tag: str, base: str,
                  args: argparse.Namespace) -> dict:
    """Train the task's teacher, or reuse the one trained on this data set
    with this schedule (``teacher/record.json`` says which it is).

    Returns:
        dict: The teacher's :func:`run_result`.
    """
    iters = teacher_iters(task, args)
    work_dir = osp.join(base, 'teacher')
    ckpt = osp.join(work_dir, f'iter_{iters}.pth')
    record = osp.join(work_dir, 'record.json')
    wanted = dict(data=data_tag, iters=iters)
    previous = json.loads(read_text(record) or '{}')
    if (osp.isfile(ckpt) and not args.retrain_teacher and {
            k: previous.get(k)
            for k in wanted
    } == wanted):
        print(f'[{task}] reusing the trained teacher {ckpt}')
        seconds = previous['seconds']
    else:
        print(f'[{task}] training the teacher for {iters} iterations')
        seconds = train(
            demo_config(task, 'teacher', data_root, work_dir, iters, ''))
        with open(record, 'w') as f:
            json.dump(dict(seconds=seconds, **wanted), f)
    return run_result(task, 'teacher', work_dir, iters, seconds)


def run_seed(task: str, seed: int, data_root: str, base: str,
             teacher_ckpt: str, args: argparse.Namespace) -> Dict[str, dict]:
    """Train and measure the three students of one seed.

    Returns:
        dict: :func:`run_result` per student variant, with the validation
        ``kl`` and ``pearson`` of the student to the teacher.
    """
    runs = {}
    for variant in STUDENTS:
        work_dir = osp.join(base, f'seed{seed}', variant)
        print(f'[{task}] seed {seed}: training {LABELS[variant]} for '
              f'{args.iters} iterations')
        cfg = demo_config(task, variant, data_root, work_dir, args.iters,
                          teacher_ckpt, seed, args.teacher_precision)
        runs[variant] = run_result(task, variant, work_dir, args.iters,
                                   train(cfg))
    # Teacher-student discrepancy on the validation set, for every student.
    dist_cfg = demo_config(task, 'dist', data_root,
                           osp.join(base, f'seed{seed}', 'dist'), args.iters,
                           teacher_ckpt, seed, args.teacher_precision)
    loader = Runner.build_dataloader(dist_cfg.val_dataloader)
    for variant in STUDENTS:
        model = build_distiller_with_student(dist_cfg,
                                             runs[variant]['checkpoint'])
        stats = next(iter(measure_discrepancy(model, loader).values()))
        runs[variant].update(kl=stats['kl'], pearson=stats['pearson'])
    return runs


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def mean_curve(curves: List[list]) -> Tuple[list, list]:
    """Mean and std per step, over the steps every curve has.

    Args:
        curves (list[list]): ``[step, value]`` lists, one per seed.

    Returns:
        tuple[list, list]: ``[step, mean]`` and ``[step, std]`` lists.
    """
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    by_seed = [dict(c) for c in curves]
    stats = [mean_std([c[step] for c in by_seed]) for step in steps]
    return ([[step, m] for step, (m, _) in zip(steps, stats)],
            [[step, s] for step, (_, s) in zip(steps, stats)])


def aggregate(runs: List[dict]) -> dict:
    """One variant over its seeds.

    Args:
        runs (list[dict]): The variant's :func:`run_result` per seed.

    Returns:
        dict: The runs (``seeds``) and, for the metric, train time, KL,
        Pearson and the curves, the mean (``<key>``) and std
        (``<key>_std``) over them.
    """
    result = dict(seeds=runs, iters=runs[0]['iters'])
    for key in ('metric', 'train_seconds', 'kl', 'pearson'):
        if key in runs[0]:
            result[key], result[f'{key}_std'] = mean_std(
                [r[key] for r in runs])
    for key in ('curve', 'loss'):
        if all(r[key] for r in runs):
            result[key], result[f'{key}_std'] = mean_curve(
                [r[key] for r in runs])
        else:
            result[key], result[f'{key}_std'] = [], []
    return result


def run_task(task: str, args: argparse.Namespace) -> dict:
    """The teacher and every seed's students of one task, aggregated."""
    init_default_scope(TASKS[task]['scope'])
    data_root, data_tag = make_data(task, osp.join(args.work_dir, 'data'),
                                    args.images)
    base = osp.join(args.work_dir, task)
    teacher = train_teacher(task, data_root, data_tag, base, args)
    per_seed = [
        run_seed(task, seed, data_root, base, teacher['checkpoint'], args)
        for seed in range(args.seeds)
    ]
    results = dict(teacher=aggregate([teacher]))
    for variant in STUDENTS:
        results[variant] = aggregate([runs[variant] for runs in per_seed])
    return results


def compare(results: dict, a: str, b: str, spec: dict) -> str:
    """Whether variant ``a`` differs from ``b`` by more than the spread.

    The spread is the sum of the two standard deviations over the seeds:
    a difference inside it is not told apart from seed noise. As every seed
    trains both variants, the per-seed differences are given too.

    Args:
        results (dict): :func:`aggregate` per variant.
        a (str): The variant compared.
        b (str): The variant it is compared with.
        spec (dict): The task's entry in :data:`TASKS`.

    Returns:
        str: One sentence for the report.
    """
    ra, rb = results[a], results[b]
    diff = ra['metric'] - rb['metric']
    d = spec['digits']
    text = (f'{LABELS[a]} vs {LABELS[b]}: {diff:+.{d}f} '
            f'{spec["metric_name"]}')
    seeds = len(ra['seeds'])
    if seeds < 2:
        return text + ' (one seed: no spread to judge it against)'
    spread = ra['metric_std'] + rb['metric_std']
    verdict = ('more than the spread' if abs(diff) > spread else
               'within the spread, so not told apart from seed noise')
    paired = [
        x['metric'] - y['metric'] for x, y in zip(ra['seeds'], rb['seeds'])
    ]
    _, paired_std = mean_std(paired)
    ahead = sum(p > 0 for p in paired)
    return (text + f', {verdict} (sum of the std: {spread:.{d}f}); per '
            f'seed {", ".join(f"{p:+.{d}f}" for p in paired)} '
            f'(std {paired_std:.{d}f}), {LABELS[a]} ahead in {ahead} of '
            f'{seeds} seeds')


def figures(task: str, results: dict, spec: dict) -> dict:
    """The validation metric and the distillation losses (a ±std band over
    several seeds), each variant in its colour of :data:`COLORS`; the KD and
    DIST losses on panels of their own (they measure different things).

    Returns:
        dict: File name -> matplotlib figure.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    seeds = len(results['dist']['seeds'])
    band = f' (mean ± std over {seeds} seeds)' if seeds > 1 else ''

    def draw(ax, variant, points, spread, label):
        steps, values = (np.array(v) for v in zip(*points))
        ax.plot(steps, values, marker='o', label=label, color=COLORS[variant])
        if seeds > 1:
            stds = np.array([s for _, s in spread])
            ax.fill_between(
                steps,
                values - stds,
                values + stds,
                color=COLORS[variant],
                alpha=0.2)

    out = {}
    fig, ax = plt.subplots(figsize=(8, 4))
    for variant in STUDENTS:
        if results[variant]['curve']:
            draw(ax, variant, results[variant]['curve'],
                 results[variant]['curve_std'], LABELS[variant])
    ax.axhline(
        results['teacher']['metric'],
        color=COLORS['teacher'],
        linestyle='--',
        label=LABELS['teacher'])
    ax.set_xlabel('iteration')
    ax.set_ylabel(f'validation {spec["metric_name"]}')
    ax.set_title(f'{task}: validation {spec["metric_name"]}{band}')
    # Beside the axes: curves rise to the right and the teacher is on top.
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out[f'{task}_val_metric.png'] = fig

    variants = [v for v in LOSS_KEYS if results[v]['loss']]
    if variants:
        fig, axes = plt.subplots(
            1, len(variants), squeeze=False, figsize=(5 * len(variants), 4))
        for ax, variant in zip(axes[0], variants):
            draw(ax, variant, results[variant]['loss'],
                 results[variant]['loss_std'], LABELS[variant])
            ax.set_xlabel('iteration')
            ax.set_ylabel(f'{LOSS_KEYS[variant]}: {LOSS_KINDS[variant]}')
            ax.set_title(LABELS[variant])
        fig.suptitle(f'{task}: distillation loss{band}')
        fig.tight_layout()
        out[f'{task}_distill_loss.png'] = fig
    return out


def plot(task: str, results: dict, spec: dict, out_dir: str) -> list:
    """Write :func:`figures` as PNG files; returns their paths."""
    import matplotlib.pyplot as plt
    paths = []
    for name, fig in figures(task, results, spec).items():
        paths.append(osp.join(out_dir, name))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def table(task: str, results: dict, spec: dict) -> str:
    """The task's markdown table and its comparisons."""
    seeds = len(results['dist']['seeds'])
    d = spec['digits']

    def cell(r: dict, key: str, digits: int) -> str:
        if key not in r:
            return '-'
        if len(r['seeds']) < 2:
            return f'{r[key]:.{digits}f}'
        return f'{r[key]:.{digits}f} ± {r[key + "_std"]:.{digits}f}'

    header = (f'| {task} | {spec["metric_name"]} | train time (s) | '
              'KL(teacher ‖ model) | Pearson with teacher |')
    rule = '| --- | --- | --- | --- | --- |'
    if seeds > 1:
        header += ' per seed |'
        rule += ' --- |'
    lines = [header, rule]
    for variant in VARIANTS:
        r = results[variant]
        row = (f'| {LABELS[variant]} | {cell(r, "metric", d)} | '
               f'{r["train_seconds"]:.0f} | {cell(r, "kl", 4)} | '
               f'{cell(r, "pearson", 4)} |')
        if seeds > 1:
            row += ' ' + ', '.join(f'{s["metric"]:.{d}f}'
                                   for s in r['seeds']) + ' |'
        lines.append(row)
    lines.append('')
    lines.append('; '.join(
        compare(results, 'dist', other, spec)
        for other in ('kd', 'student')) + '.')
    return '\n'.join(lines)


def main() -> None:
    """Run the demo and write its report."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', default='all', choices=['det', 'seg', 'all'])
    parser.add_argument('--iters', type=int, default=250)
    parser.add_argument(
        '--images', type=int, default=400, help='training images per data set')
    parser.add_argument(
        '--teacher-iters',
        type=int,
        default=None,
        help='teacher schedule (default: 1000 for det, 500 '
        'for seg); the students share --iters')
    parser.add_argument(
        '--seeds',
        type=int,
        default=1,
        help='train the three students with seeds 0..N-1 '
        'and report mean and std (one teacher for all)')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--retrain-teacher', action='store_true')
    parser.add_argument(
        '--teacher-precision',
        choices=['float32', 'bf16'],
        default=None,
        help="the students' teacher form (default: the demo configs', "
        "'bf16'; float32 on a CPU without bf16)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f'--seeds must be at least 1, got {args.seeds}')
    os.makedirs(args.work_dir, exist_ok=True)
    tasks = list(TASKS) if args.task == 'all' else [args.task]
    report_path = osp.join(args.work_dir, 'report.json')
    report = {}  # this run's tasks only
    start = time.perf_counter()
    for task in tasks:
        report[task] = dict(
            iters=args.iters,
            images=args.images,
            seeds=args.seeds,
            results=run_task(task, args))
    total = time.perf_counter() - start

    sections = []
    for name in os.listdir(args.work_dir):  # an earlier run's plots
        if name.endswith('.png'):
            os.remove(osp.join(args.work_dir, name))
    for task in tasks:
        spec = TASKS[task]
        results = report[task]['results']
        plots = plot(task, results, spec, args.work_dir)
        report[task]['plots'] = plots
        sections.append(f'**{task}** data: {spec["data"]}. Models: '
                        f'{spec["models"]}.')
        sections.append(table(task, results, spec))
        sections.append('\n'.join(f'![{osp.basename(p)}]({osp.basename(p)})'
                                  for p in plots))
    report['wall_seconds'] = total
    with open(report_path, 'w') as f:
        json.dump(report, f, indent=2)
    seeds = (f'seeds 0-{args.seeds - 1} (mean ± sample std; the spread of '
             'a comparison is the sum of the two std)'
             if args.seeds > 1 else 'seed 0')
    teachers = ', '.join(f'{teacher_iters(t, args)} iterations ({t})'
                         for t in tasks)
    text = ('# mmdist demo: KD vs DIST on synthetic data\n\n'
            f'{args.iters} iterations per student (same schedule and data '
            f'for the three), {seeds}; one teacher per task (seed 0), '
            f'trained for {teachers}; '
            f'{args.images} training images per data set; wall time of this '
            f'run {total:.0f} s (a reused teacher\'s train time is that of '
            'the run that trained it).\n\n' + '\n\n'.join(sections) + '\n')
    with open(osp.join(args.work_dir, 'report.md'), 'w') as f:
        f.write(text)
    print('\n' + text)
    print(f'report: {osp.join(args.work_dir, "report.md")}')
    if not all(
            np.isfinite(s['metric']) for t in tasks for v in VARIANTS
            for s in report[t]['results'][v]['seeds']):
        raise SystemExit('a metric is missing or not finite')


if __name__ == '__main__':
    main()
