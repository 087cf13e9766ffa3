"""A teacher trained on all classes distils a student of a subset of them.

The digits check (``digits_check.py``: the UCI handwritten digits, the
shipped CIFAR-100 recipe's terms and normalisation, all with
``tools/train.py``) with other label sets: the teacher is trained alone on
all 10 digits, the student (the narrow CIFAR ResNet-18) on 5 of them,
alone, with KD and with DIST, for each seed. The terms are the shipped
CIFAR configs' own; the distiller maps the teacher's 10 columns onto the
student's 5 classes by name (``mmdist.distillers.class_map``: softmax,
the other 5 dropped and the rest renormalised). Validation top-1 on the
5 digits' validation images.

Usage:
    python .dev_scripts/subset_digits_check.py [--digits-csv PATH]
        [--work-dir work_dirs/digits_subset] [--epochs 30] [--seeds 0 1 2]
        [--subset 1 3 5 7 9]
"""
import argparse
import copy
import glob
import importlib.util
import os.path as osp
import shutil
import statistics

from mmengine.config import Config


def _digits_check():
    """``digits_check.py`` beside this script (its data and recipe)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'digits_check.py')
    spec = importlib.util.spec_from_file_location('digits_check', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DIGITS = _digits_check()
ROOT = DIGITS.ROOT


def with_classes(cfg: Config, data_root: str, classes) -> Config:
    """``cfg`` reading ``data_root``, its classes named in the data sets'
    metainfo (where the distiller reads them)."""
    cfg = copy.deepcopy(cfg)
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        dataset.data_root = data_root
        dataset.metainfo = dict(classes=tuple(classes))
    cfg.data_preprocessor.num_classes = len(classes)
    return cfg


def subset_data(root: str, out: str, subset) -> None:
    """Copy the class folders of ``subset`` (train and val)."""
    for split in ('train', 'val'):
        for digit in subset:
            target = osp.join(out, split, digit)
            if not osp.isdir(target):
                shutil.copytree(osp.join(root, split, digit), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--digits-csv', default=None)
    parser.add_argument('--work-dir', default='work_dirs/digits_subset')
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument(
        '--subset', nargs='+', default=['1', '3', '5', '7', '9'])
    args = parser.parse_args()
    work = osp.abspath(args.work_dir)
    full_root = osp.join(work, 'data')
    DIGITS.write_digits(args.digits_csv or DIGITS.default_digits_csv(),
                        full_root)
    subset = sorted(args.subset)
    sub_root = osp.join(work, 'data_subset')
    subset_data(full_root, sub_root, subset)
    digits = [str(d) for d in range(10)]

    # The teacher: the full-width student config, all 10 digits, alone.
    dist = DIGITS.base_config(full_root, args.epochs, seed=0)
    teacher_cfg = with_classes(dist, full_root, digits)
    teacher_cfg.model = copy.deepcopy(dist.model.student)
    teacher_dir = osp.join(work, 'teacher')
    results = {
        'teacher (10 digits, alone)': [DIGITS.train(teacher_cfg, teacher_dir)]
    }
    teacher_ckpt = osp.join(teacher_dir, f'epoch_{args.epochs}.pth')

    kd_path = sorted(
        glob.glob(osp.join(ROOT, 'configs/mmpretrain/*cifar100*_kd.py')))[0]
    kd_terms = Config.fromfile(kd_path).model.distill_terms
    for seed in args.seeds:
        cfg = with_classes(
            DIGITS.base_config(sub_root, args.epochs, seed), sub_root, subset)
        cfg.model.student = DIGITS.narrow(cfg.model.student)
        cfg.model.student.head.num_classes = len(subset)
        cfg.model.teacher = osp.join(teacher_dir, 'config.py')
        cfg.model.teacher_ckpt = teacher_ckpt
        alone = copy.deepcopy(cfg)
        alone.model = copy.deepcopy(cfg.model.student)
        kd = copy.deepcopy(cfg)
        kd.model.distill_terms = kd_terms
        for name, variant in (('student alone', alone), ('KD', kd), ('DIST',
                                                                     cfg)):
            slug = name.replace(' ', '_')
            top1 = DIGITS.train(variant, osp.join(work, f'{slug}_seed{seed}'))
            results.setdefault(name, []).append(top1)
            print(f'seed {seed} {name}: top-1 {top1:.2f}', flush=True)

    print(f'\nUCI digits: teacher on 10 digits, student on {subset}, '
          f'{args.epochs} epochs, seeds {args.seeds}')
    print('| model | top-1 per seed | mean +- std |')
    print('| --- | --- | --- |')
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.
        print(f'| {name} | {", ".join(f"{v:.2f}" for v in values)} | '
              f'{statistics.mean(values):.2f} +- {spread:.2f} |')


if __name__ == '__main__':
    main()
