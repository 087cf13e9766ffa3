"""KD vs DIST on built-in synthetic data, end to end on a CPU.

For each task (``det``: RetinaNet on COCO-layout shapes; ``seg``: FCN on
Cityscapes-layout scenes) the demo

1. generates the data set (fixed seed; reused on a rerun),
2. trains a stronger teacher (reused on a rerun),
3. trains the student alone, with KD and with DIST, with the same schedule,
   seed and data,
4. evaluates all four with the stock evaluators (CocoMetric bbox mAP,
   IoUMetric mIoU) and measures the teacher-student discrepancy,

then writes ``report.md``, ``report.json`` and PNG plots to the work dir
and prints the table. Every number comes from the run.

Usage:
    python tools/demo.py [--task det|seg|all] [--iters 250]
        [--teacher-iters 500] [--work-dir work_dirs/demo] [--images 400]
        [--retrain-teacher]
"""
import argparse
import json
import os
import os.path as osp
import time

import mmdist  # noqa: F401  (registers mmdist, safe checkpoint loading)
import numpy as np
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from mmdist.analysis import measure_discrepancy
from mmdist.testing import make_cityscapes, make_coco_detection
from mmdist.utils.student import build_distiller_with_student

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIGS = osp.join(REPO, 'configs', 'demo')
TASKS = {
    'det': dict(metric='coco/bbox_mAP', metric_name='bbox mAP',
                scope='mmdet', loss_keys=('loss_kd', 'loss_dist')),
    'seg': dict(metric='mIoU', metric_name='mIoU', scope='mmseg',
                loss_keys=('loss_kd', 'loss_dist')),
}
VARIANTS = ('teacher', 'student', 'kd', 'dist')
LABELS = dict(teacher='teacher', student='student alone', kd='student + KD',
              dist='student + DIST')


def make_data(task: str, root: str, images: int) -> str:
    """Generate the task's data set once (a marker file records it)."""
    folder = osp.join(root, 'coco' if task == 'det' else 'cityscapes')
    marker = osp.join(folder, f'.complete_{images}')
    if not osp.exists(marker):
        print(f'[{task}] generating {images} training images in {folder}')
        if task == 'det':
            make_coco_detection(folder, num_train=images,
                                num_val=max(8, images // 4),
                                size=(128, 128), max_objects=6, seed=0)
        else:
            make_cityscapes(folder, num_train=images,
                            num_val=max(4, images // 8), size=(128, 64),
                            max_objects=8, seed=0)
        open(marker, 'w').close()
    return folder + '/'


def demo_config(task: str, variant: str, data_root: str, work_dir: str,
                iters: int, teacher_ckpt: str) -> Config:
    name = {'teacher': 'teacher', 'student': 'student', 'kd': 'student_kd',
            'dist': 'student_dist'}[variant]
    cfg = Config.fromfile(osp.join(DEMO_CONFIGS, f'{task}_{name}.py'))
    cfg.work_dir = work_dir
    cfg.experiment_name = f'demo_{task}_{variant}'
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
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=warmup),
        dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup,
             end=iters)
    ]
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = max(1, iters // 15)
    if variant in ('kd', 'dist'):
        cfg.model.teacher_ckpt = teacher_ckpt
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
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    return time.perf_counter() - start


def run_task(task: str, args) -> dict:
    spec = TASKS[task]
    init_default_scope(spec['scope'])
    data_root = make_data(task, osp.join(args.work_dir, 'data'), args.images)
    base = osp.join(args.work_dir, task)
    teacher_dir = osp.join(base, 'teacher')
    teacher_iters = args.teacher_iters or 2 * args.iters
    teacher_ckpt = osp.join(teacher_dir, f'iter_{teacher_iters}.pth')
    results = {}
    for variant in VARIANTS:
        work_dir = osp.join(base, variant)
        iters = teacher_iters if variant == 'teacher' else args.iters
        cfg = demo_config(task, variant, data_root, work_dir, iters,
                          teacher_ckpt)
        reuse = (variant == 'teacher' and osp.isfile(teacher_ckpt)
                 and not args.retrain_teacher)
        if reuse:
            print(f'[{task}] reusing the trained teacher {teacher_ckpt}')
            seconds = json.load(open(osp.join(teacher_dir,
                                              'train_time.json')))['seconds']
        else:
            print(f'[{task}] training {LABELS[variant]} for {iters} '
                  'iterations')
            seconds = train(cfg)
            if variant == 'teacher':
                with open(osp.join(teacher_dir, 'train_time.json'), 'w') as f:
                    json.dump(dict(seconds=seconds), f)
        scalars = read_scalars(work_dir)
        curve = [(s['step'], s[spec['metric']]) for s in scalars
                 if spec['metric'] in s]
        losses = {
            key: [(s['step'], s[key]) for s in scalars if key in s]
            for key in spec['loss_keys']
        }
        results[variant] = dict(
            metric=curve[-1][1] if curve else float('nan'),
            curve=curve,
            losses={k: v for k, v in losses.items() if v},
            train_seconds=seconds,
            iters=iters,
            checkpoint=osp.join(work_dir, f'iter_{iters}.pth'))

    # Teacher-student discrepancy on the validation set, for every student.
    dist_cfg = demo_config(task, 'dist', data_root, osp.join(base, 'dist'),
                           args.iters, teacher_ckpt)
    loader = Runner.build_dataloader(dist_cfg.val_dataloader)
    for variant in ('student', 'kd', 'dist'):
        model = build_distiller_with_student(dist_cfg,
                                             results[variant]['checkpoint'])
        stats = measure_discrepancy(model, loader)
        main_term = next(iter(stats.values()))
        results[variant]['kl'] = main_term['kl']
        results[variant]['pearson'] = main_term['pearson']
    return results


def plot(task: str, results: dict, spec: dict, out_dir: str) -> list:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in ('student', 'kd', 'dist'):
        if results[variant]['curve']:
            steps, values = zip(*results[variant]['curve'])
            ax.plot(steps, values, marker='o', label=LABELS[variant])
    teacher = results['teacher']['metric']
    ax.axhline(teacher, color='gray', linestyle='--', label='teacher')
    ax.set_xlabel('iteration')
    ax.set_ylabel(f'validation {spec["metric_name"]}')
    ax.set_title(f'{task}: validation {spec["metric_name"]}')
    ax.legend()
    fig.tight_layout()
    paths.append(osp.join(out_dir, f'{task}_val_metric.png'))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, key in (('kd', 'loss_kd'), ('dist', 'loss_dist')):
        points = results[variant]['losses'].get(key, [])
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=f'{LABELS[variant]}: {key}')
    ax.set_xlabel('iteration')
    ax.set_ylabel('distillation loss')
    ax.set_title(f'{task}: distillation loss')
    ax.legend()
    fig.tight_layout()
    paths.append(osp.join(out_dir, f'{task}_distill_loss.png'))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def table(task: str, results: dict, spec: dict) -> str:
    lines = [
        f'| {task} | {spec["metric_name"]} | train time (s) | '
        'KL(teacher ‖ model) | Pearson with teacher |',
        '| --- | --- | --- | --- | --- |'
    ]
    for variant in VARIANTS:
        r = results[variant]
        kl = f'{r["kl"]:.4f}' if 'kl' in r else '-'
        rho = f'{r["pearson"]:.4f}' if 'pearson' in r else '-'
        lines.append(f'| {LABELS[variant]} | {r["metric"]:.4f} | '
                     f'{r["train_seconds"]:.0f} | {kl} | {rho} |')
    kd, dist = results['kd']['metric'], results['dist']['metric']
    verdict = ('DIST beats KD' if dist > kd else
               'DIST does NOT beat KD' if dist < kd else 'DIST ties KD')
    lines.append('')
    lines.append(f'{verdict} on this data ({spec["metric_name"]} '
                 f'{dist:.4f} vs {kd:.4f}); student alone '
                 f'{results["student"]["metric"]:.4f}, teacher '
                 f'{results["teacher"]["metric"]:.4f}.')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', default='all', choices=['det', 'seg', 'all'])
    parser.add_argument('--iters', type=int, default=250)
    parser.add_argument('--images', type=int, default=400,
                        help='training images per data set')
    parser.add_argument('--teacher-iters', type=int, default=None,
                        help='teacher schedule (default: twice --iters); '
                        'the three students share --iters')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--retrain-teacher', action='store_true')
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    tasks = list(TASKS) if args.task == 'all' else [args.task]
    report_path = osp.join(args.work_dir, 'report.json')
    report = {}
    if osp.isfile(report_path):
        report = json.load(open(report_path))
    start = time.perf_counter()
    for task in tasks:
        results = run_task(task, args)
        report[task] = dict(iters=args.iters, images=args.images,
                            results=results)
    total = time.perf_counter() - start

    sections = []
    for task in tasks:
        spec = TASKS[task]
        results = report[task]['results']
        plots = plot(task, results, spec, args.work_dir)
        report[task]['plots'] = plots
        sections.append(table(task, results, spec))
        sections.append('\n'.join(f'![{osp.basename(p)}]({osp.basename(p)})'
                                  for p in plots))
    with open(report_path, 'w') as f:
        json.dump(report, f, indent=2)
    text = ('# mmdist demo: KD vs DIST on synthetic data\n\n'
            f'{args.iters} iterations per student (same schedule, seed and '
            f'data for the three), {args.teacher_iters or 2 * args.iters} '
            f'for the teacher, {args.images} training images per data set; '
            f'wall time of this run {total:.0f} s (a reused teacher\'s '
            'train time is that of the run that trained it).\n\n' +
            '\n\n'.join(sections) + '\n')
    with open(osp.join(args.work_dir, 'report.md'), 'w') as f:
        f.write(text)
    print('\n' + text)
    print(f'report: {osp.join(args.work_dir, "report.md")}')
    if not all(np.isfinite(report[t]['results'][v]['metric'])
               for t in tasks for v in VARIANTS):
        raise SystemExit('a metric is missing or not finite')


if __name__ == '__main__':
    main()
