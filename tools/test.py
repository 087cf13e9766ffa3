"""Evaluate a checkpoint with the config's test loop and evaluator.

For a distillation config this evaluates the student, built as the stock
model of the student's own config (the teacher is neither built nor needed);
CHECKPOINT may be a distillation checkpoint (``student.*`` weights) or a
plain student checkpoint. With ``--teacher`` it evaluates the teacher the
distiller uses, fed the student's batch renormalised for it, with the
config's evaluator; CHECKPOINT then overrides ``teacher_ckpt``.
"""
import argparse
import os
import os.path as osp

import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdist  # noqa: F401  (registers mmdist, safe checkpoint loading)
from mmdist.engine import cpu_launch_config
from mmdist.utils import is_distiller, resolve_teacher_paths, student_config
from mmdist.utils.student import (distillation_checkpoint_note,
                                  is_distillation_checkpoint,
                                  load_student_weights)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='checkpoint file (optional with --teacher: the config\'s '
        'teacher_ckpt is used)')
    parser.add_argument(
        '--teacher',
        action='store_true',
        help='evaluate the teacher of a distillation config, as the '
        'distiller runs it')
    parser.add_argument('--work-dir', help='directory for the evaluation log')
    parser.add_argument('--out', help='dump predictions to this pickle file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. key=value')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    resolve_teacher_paths(cfg, args.config)
    student_checkpoint = None
    if args.teacher:
        if not is_distiller(cfg.model):
            raise SystemExit('--teacher needs a distillation config')
        cfg.model.predict_with = 'teacher'
        if args.checkpoint is not None:
            if is_distillation_checkpoint(args.checkpoint):
                raise SystemExit(
                    f'{distillation_checkpoint_note(args.checkpoint)}; '
                    '--teacher evaluates the teacher\'s own weights '
                    '(teacher_ckpt, '
                    f'{cfg.model.get("teacher_ckpt")!r} in this config): give '
                    'no checkpoint or the teacher\'s, or drop --teacher to '
                    'evaluate the student of this checkpoint')
            cfg.model.teacher_ckpt = args.checkpoint
        cfg.load_from = None
    elif args.checkpoint is None:
        raise SystemExit('a checkpoint is needed (or --teacher)')
    elif is_distiller(cfg.model):
        # The stock student model: no teacher to build or download.
        cfg = student_config(cfg)
        cfg.load_from = None
        student_checkpoint = args.checkpoint
    else:
        cfg.load_from = args.checkpoint
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl or .pickle file')
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(
            cfg.test_evaluator, dict) else list(cfg.test_evaluator)
        cfg.test_evaluator.append(
            dict(type='DumpResults', out_file_path=args.out))
    if args.launcher == 'pytorch':
        cpu_launch_config(cfg)

    runner = (
        Runner.from_cfg(cfg)
        if 'runner_type' not in cfg else RUNNERS.build(cfg))
    if student_checkpoint is not None:
        load_student_weights(runner.model, student_checkpoint)
    try:
        runner.test()
    finally:
        # Tear the process group down before interpreter exit: gloo's
        # threads otherwise may abort the process at shutdown.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
