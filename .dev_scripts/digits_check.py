"""Distil on real images, end to end, in minutes on a CPU.

The UCI handwritten digits (1,797 8x8 images, shipped inside scikit-learn as
``sklearn/datasets/data/digits.csv.gz``) are written as 16x16 RGB class
folders (500 training, 1,297 validation images). Then, all with
``tools/train.py`` and the shipped CIFAR-100 recipe's terms and input
normalisation (its top-level ``data_preprocessor``, which the distiller must
honour for both models):

1. a CIFAR ResNet-18 teacher is trained alone;
2. a narrow CIFAR ResNet-18 student (``base_channels=8``) is trained alone,
   with KD, with DIST (the default, floored form of ``DISTLoss``) and with
   the paper's exact DIST (``floor=0``), for each seed;
3. with ``--zero-head``, the same student with a zero-initialised linear
   head (how ViT and DeiT heads start) alone, with DIST and with the
   paper's DIST; with ``--warmup-iters N``, DIST under a linear
   distillation-weight warm-up (``mmdist.DistillWeightHook``) too;

and a table of validation top-1 (mean +- standard deviation over seeds) is
printed. No learning-rate warm-up anywhere, as in the shipped MMPretrain
configs.

Usage:
    python .dev_scripts/digits_check.py [--digits-csv PATH/digits.csv.gz]
        [--work-dir work_dirs/digits] [--epochs 30] [--seeds 0 1 2]
        [--zero-head] [--warmup-iters N] [--teacher-precision bf16]
        [--variants KD DIST]

``--digits-csv`` defaults to the copy inside the installed scikit-learn
(``make install`` installs it). The teacher distils in its fast form
(``teacher_precision='bf16'``; float32 on a CPU without bf16); compare with
``--teacher-precision float32`` in another ``--work-dir``.
"""
import argparse
import copy
import glob
import gzip
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
from typing import Dict, Optional

import numpy as np
from mmengine.config import Config
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SIZE = 16
NUM_TRAIN = 500


def write_digits(csv_path: str, root: str) -> None:
    """Class folders ``train/<digit>/`` and ``val/<digit>/`` of PNGs."""
    if osp.isdir(osp.join(root, 'val')):
        return
    with gzip.open(csv_path, 'rt') as f:
        rows = np.loadtxt(f, delimiter=',')
    pixels, labels = rows[:, :-1], rows[:, -1].astype(int)
    order = np.random.default_rng(0).permutation(len(rows))
    for index, sample in enumerate(order):
        split = 'train' if index < NUM_TRAIN else 'val'
        folder = osp.join(root, split, str(labels[sample]))
        os.makedirs(folder, exist_ok=True)
        image = (pixels[sample].reshape(8, 8) * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR)
        image.convert('RGB').save(osp.join(folder, f'{sample}.png'))


def base_config(data_root: str,
                epochs: int,
                seed: int,
                teacher_precision: str = 'bf16') -> Config:
    """The shipped CIFAR-100 DIST config on the digits."""
    path = sorted(
        glob.glob(osp.join(ROOT, 'configs/mmpretrain/*cifar100*_dist.py')))[0]
    cfg = Config.fromfile(path)
    cfg.model.student.head.num_classes = 10
    cfg.model.teacher_precision = teacher_precision
    train = [
        dict(type='LoadImageFromFile'),
        dict(type='RandomCrop', crop_size=SIZE, padding=2),
        dict(type='PackInputs')
    ]
    test = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    for split, pipeline in (('train', train), ('val', test), ('test', test)):
        loader = cfg[f'{split}_dataloader']
        loader.batch_size = 64
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset = dict(
            type='CustomDataset',
            data_root=data_root,
            data_prefix='train' if split == 'train' else 'val',
            pipeline=pipeline)
    cfg.data_preprocessor.num_classes = 10
    cfg.train_cfg = dict(by_epoch=True, max_epochs=epochs, val_interval=epochs)
    cfg.optim_wrapper = dict(
        optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4))
    cfg.param_scheduler = dict(
        type='MultiStepLR',
        by_epoch=True,
        milestones=[int(epochs * 2 / 3),
                    int(epochs * 5 / 6)],
        gamma=0.1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=epochs)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=20)
    cfg.randomness = dict(seed=seed)
    return cfg


def narrow(model: dict, zero_head: bool = False) -> dict:
    """The student: the model at 1/8 width; with ``zero_head`` its linear
    head starts at zero (weights and bias), as ViT and DeiT heads do."""
    model = copy.deepcopy(model)
    model.backbone.base_channels = 8
    model.backbone.stem_channels = 8
    model.head.in_channels = 64
    if zero_head:
        model.head.init_cfg = dict(type='Constant', layer='Linear', val=0)
    return model


def default_digits_csv() -> str:
    """The UCI digits as the installed scikit-learn ships them."""
    try:
        import sklearn
    except ImportError as error:
        raise SystemExit('scikit-learn is not installed: run `make install` '
                         'or pass --digits-csv PATH/digits.csv.gz') from error
    return osp.join(
        osp.dirname(sklearn.__file__), 'datasets', 'data', 'digits.csv.gz')


def train(cfg: Config, work_dir: str) -> float:
    """Train with tools/train.py; return the final validation top-1."""
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, 'config.py')
    cfg.dump(path)
    logs = sorted(glob.glob(osp.join(work_dir, '*/vis_data/scalars.json')))
    if not logs:
        subprocess.run([
            sys.executable,
            osp.join(ROOT, 'tools/train.py'), path, '--work-dir', work_dir
        ],
                       check=True,
                       stdout=subprocess.DEVNULL)
        logs = sorted(glob.glob(osp.join(work_dir, '*/vis_data/scalars.json')))
    with open(logs[-1]) as f:
        lines = [json.loads(line) for line in f]
    return [s['accuracy/top1'] for s in lines if 'accuracy/top1' in s][-1]


def student_variants(cfg: Config, kd_terms: Optional[list],
                     teacher_config: str, teacher_ckpt: str,
                     zero_head: bool) -> Dict[str, Config]:
    """The student alone, with KD (when ``kd_terms`` are given), with
    DIST as shipped and with the paper's exact DIST (``floor=0``).

    Args:
        cfg (Config): The shipped DIST config on the digits.
        kd_terms (list, optional): The shipped KD config's terms.
        teacher_config (str): The trained teacher's config.
        teacher_ckpt (str): Its checkpoint.
        zero_head (bool): Start the student's head at zero.

    Returns:
        dict[str, Config]: Variant name to config.
    """
    student = narrow(cfg.model.student, zero_head)
    alone = copy.deepcopy(cfg)
    alone.model = student
    variants = {'student alone': alone}
    cfg.model.student = student
    cfg.model.teacher = teacher_config
    cfg.model.teacher_ckpt = teacher_ckpt
    if kd_terms is not None:
        kd = copy.deepcopy(cfg)
        kd.model.distill_terms = kd_terms
        variants['KD'] = kd
    variants['DIST'] = cfg
    paper = copy.deepcopy(cfg)
    for term in paper.model.distill_terms:
        term.loss.floor = 0.
    variants['DIST (paper form, floor=0)'] = paper
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--digits-csv', default=None)
    parser.add_argument('--work-dir', default='work_dirs/digits')
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument(
        '--warmup-iters',
        type=int,
        default=0,
        help='also DIST with a linear distillation-weight '
        'warm-up of this many iterations (0: not run)')
    parser.add_argument(
        '--zero-head',
        action='store_true',
        help='also students with a zero-initialised head')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument(
        '--teacher-precision',
        default='bf16',
        choices=['float32', 'bf16'],
        help="the distillers' teacher_precision")
    parser.add_argument(
        '--variants',
        nargs='+',
        default=None,
        help="train only these students, named as in the "
        "table (e.g. KD DIST); default: all")
    args = parser.parse_args()
    data_root = osp.abspath(osp.join(args.work_dir, 'data'))
    write_digits(args.digits_csv or default_digits_csv(), data_root)

    # The teacher: the student's config at full width, trained alone.
    dist = base_config(data_root, args.epochs, seed=0)
    teacher_cfg = copy.deepcopy(dist)
    teacher_cfg.model = copy.deepcopy(dist.model.student)
    teacher_dir = osp.abspath(osp.join(args.work_dir, 'teacher'))
    results = {'teacher (ResNet-18, alone)': [train(teacher_cfg, teacher_dir)]}
    teacher_ckpt = osp.join(teacher_dir, f'epoch_{args.epochs}.pth')

    kd_path = sorted(
        glob.glob(osp.join(ROOT, 'configs/mmpretrain/*cifar100*_kd.py')))[0]
    kd_terms = Config.fromfile(kd_path).model.distill_terms
    for seed in args.seeds:
        variants = student_variants(
            base_config(data_root, args.epochs, seed, args.teacher_precision),
            kd_terms, osp.join(teacher_dir, 'config.py'), teacher_ckpt, False)
        if args.warmup_iters:
            warm = copy.deepcopy(variants['DIST'])
            warm.custom_hooks = [
                dict(
                    type='mmdist.DistillWeightHook',
                    schedule='linear',
                    end=args.warmup_iters)
            ]
            variants[f'DIST, warm-up {args.warmup_iters} it'] = warm
        if args.zero_head:
            zero = student_variants(
                base_config(data_root, args.epochs, seed,
                            args.teacher_precision), None,
                osp.join(teacher_dir, 'config.py'), teacher_ckpt, True)
            variants.update({
                f'{name}, zero-init head': v
                for name, v in zero.items()
            })
        unknown = set(args.variants or ()) - set(variants)
        if unknown:
            parser.error(f'unknown --variants {sorted(unknown)}; the '
                         f'students are {sorted(variants)}')
        for name, variant in variants.items():
            if args.variants and name not in args.variants:
                continue
            slug = name.replace(', ', '_').replace(' ', '_').replace(
                '(', '').replace(')', '').replace('=', '')
            top1 = train(variant, osp.join(args.work_dir,
                                           f'{slug}_seed{seed}'))
            results.setdefault(name, []).append(top1)
            print(f'seed {seed} {name}: top-1 {top1:.2f}', flush=True)

    print(f'\nUCI digits, {NUM_TRAIN} training / 1297 validation images '
          f'at {SIZE}x{SIZE}, {args.epochs} epochs, seeds {args.seeds}')
    print('| model | top-1 per seed | mean +- std |')
    print('| --- | --- | --- |')
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.
        print(f'| {name} | {", ".join(f"{v:.2f}" for v in values)} | '
              f'{statistics.mean(values):.2f} +- {spread:.2f} |')


if __name__ == '__main__':
    main()
