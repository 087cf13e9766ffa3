"""Measure the teacher-student discrepancy of a distillation config.

Runs the student and the teacher on a data set split and prints, per
distillation term, the mean KL(teacher || student) and the mean Pearson
correlation of their predictions (rows as the term's loss defines them).

Usage:
    python tools/analysis_tools/discrepancy.py CONFIG STUDENT_CKPT
        [--split val|test|train] [--max-batches N] [--cfg-options ...]

CONFIG is a distillation config (its teacher and teacher_ckpt are used);
STUDENT_CKPT is a distillation checkpoint or a plain student checkpoint.
"""
import argparse
import json

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmdist  # noqa: F401
from mmdist.analysis import measure_discrepancy
from mmdist.utils.student import build_distiller_with_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='distillation config')
    parser.add_argument('checkpoint', help='student checkpoint')
    parser.add_argument(
        '--split', default='val', choices=['train', 'val', 'test'])
    parser.add_argument('--max-batches', type=int, default=None)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--json', help='also write the result here')
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = build_distiller_with_student(cfg, args.checkpoint)
    loader = Runner.build_dataloader(cfg[f'{args.split}_dataloader'])
    result = measure_discrepancy(model, loader, args.max_batches)
    for name, stats in result.items():
        if 'skipped' in stats:
            print(f'{name}: skipped, {stats["skipped"]}')
            continue
        print(f'{name}: KL(teacher || student) = {stats["kl"]:.4f}, '
              f'Pearson = {stats["pearson"]:.4f} over {stats["rows"]} rows')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
