"""A detection teacher trained on all classes distils a student of a subset.

The demo detector (``tools/misc/demo.py``: RetinaNet on COCO-layout
shapes) with other label sets: the demo teacher is trained alone on all 5
shapes, the demo student on 3 of them, alone, with the demo's KD terms and
with its DIST terms, for each seed. The student's data set is the same
annotation file read with ``metainfo.classes`` of the 3 shapes (MMDet keeps
only their boxes; the other shapes in its images are background to it, and
images without any of the 3 are left out of training). The distiller maps
the teacher's 5 sigmoid columns per anchor onto the student's 3 classes by
name (``mmdist.distillers.class_map``); bbox mAP on the 3 shapes with the
stock ``CocoMetric``. Every run goes through ``tools/train.py``.

Usage:
    python .dev_scripts/subset_det_check.py [--work-dir work_dirs/det_subset]
        [--teacher-iters 1000] [--iters 250] [--images 400]
        [--seeds 0 1 2] [--subset square circle triangle]
"""
import argparse
import copy
import glob
import importlib.util
import json
import os
import os.path as osp
import statistics
import subprocess
import sys

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _demo():
    """``tools/misc/demo.py`` (its data and configs)."""
    path = osp.join(ROOT, 'tools', 'misc', 'demo.py')
    spec = importlib.util.spec_from_file_location('mmdist_demo', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO = _demo()


def train(cfg: Config, work_dir: str) -> list:
    """Train with tools/train.py (unless done); the validation curve
    ``[(step, bbox mAP), ...]``."""
    os.makedirs(work_dir, exist_ok=True)
    cfg.work_dir = work_dir
    done = osp.join(work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')
    if not osp.isfile(done):  # not trained, or stopped part-way
        cfg.dump(osp.join(work_dir, 'config.py'))
        subprocess.run([
            sys.executable,
            osp.join(ROOT, 'tools/train.py'),
            osp.join(work_dir, 'config.py')
        ],
                       check=True,
                       stdout=subprocess.DEVNULL)
    # The last run's scalars (a rerun after a stop starts a new folder).
    logs = sorted(glob.glob(osp.join(work_dir, '*/vis_data/scalars.json')))
    with open(logs[-1]) as f:
        lines = [json.loads(line) for line in f]
    return [(s['step'], s['coco/bbox_mAP']) for s in lines
            if 'coco/bbox_mAP' in s]


def print_table(results: dict) -> None:
    """Print bbox mAP per seed and mean +- std of each model as Markdown."""
    print('| model | bbox mAP per seed | mean +- std |')
    print('| --- | --- | --- |')
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.
        print(f'| {name} | {", ".join(f"{v:.3f}" for v in values)} | '
              f'{statistics.mean(values):.3f} +- {spread:.3f} |')


def with_classes(cfg: Config, classes) -> Config:
    """``cfg`` (a student, alone or in a distiller) on ``classes`` only."""
    cfg = copy.deepcopy(cfg)
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.metainfo = dict(
            classes=tuple(classes))
    student = cfg.model.get('student', cfg.model)
    student.bbox_head.num_classes = len(classes)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/det_subset')
    parser.add_argument('--teacher-iters', type=int, default=1000)
    parser.add_argument('--iters', type=int, default=250)
    parser.add_argument('--images', type=int, default=400)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument(
        '--subset', nargs='+', default=['square', 'circle', 'triangle'])
    args = parser.parse_args()
    work = osp.abspath(args.work_dir)
    data_root, _ = DEMO.make_data('det', osp.join(work, 'data'), args.images)

    teacher_dir = osp.join(work, 'teacher')
    teacher_cfg = DEMO.demo_config('det', 'teacher', data_root, teacher_dir,
                                   args.teacher_iters, '')
    teacher_map = train(teacher_cfg, teacher_dir)[-1][1]
    print(f'teacher: bbox mAP {teacher_map:.3f}', flush=True)
    results = {'teacher (5 shapes, alone)': [teacher_map]}
    teacher_ckpt = osp.join(teacher_dir, f'iter_{args.teacher_iters}.pth')

    names = dict(student='student alone', kd='KD', dist='DIST')
    for seed in args.seeds:
        for variant, name in names.items():
            run_dir = osp.join(work, f'{variant}_seed{seed}')
            cfg = DEMO.demo_config('det', variant, data_root, run_dir,
                                   args.iters, teacher_ckpt, seed)
            cfg = with_classes(cfg, args.subset)
            if variant != 'student':
                # The teacher's own config, whose data names its 5 classes.
                cfg.model.teacher = osp.join(teacher_dir, 'config.py')
            mAP = train(cfg, run_dir)[-1][1]
            results.setdefault(name, []).append(mAP)
            print(f'seed {seed} {name}: bbox mAP {mAP:.3f}', flush=True)

    print(f'\nDemo detector: teacher on 5 shapes, student on {args.subset}, '
          f'{args.iters} iterations, seeds {args.seeds}')
    print_table(results)


if __name__ == '__main__':
    main()
