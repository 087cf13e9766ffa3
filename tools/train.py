"""Train a model (a distiller or any OpenMMLab model) with MMEngine's Runner.

Same arguments and habits as MMDetection's tools/train.py, plus fault
tolerance (:func:`mmdist.engine.enable_fault_tolerance`): where the config
uses MMEngine's stock parts, the checkpoint hook becomes
``mmdist.SafeCheckpointHook``, ``mmdist.PreemptionHook`` and
``mmdist.DivergenceGuardHook`` join ``custom_hooks`` and an epoch-based loop
becomes ``mmdist.ResumableEpochBasedTrainLoop``. The log says, once, what
was added and why. ``--no-fault-tolerance``, or ``fault_tolerance = False``
in the config, turns all of it off: the Runner then gets the hooks and loop
MMDetection's tools/train.py gives it.
"""
import argparse
import os
import os.path as osp
import shlex
import sys
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdist  # noqa: F401  (registers mmdist, safe checkpoint loading)
from mmdist.engine import (FAULT_TOLERANCE_KEY, TrainingDiverged,
                           cpu_launch_config, enable_fault_tolerance)
from mmdist.utils import resolve_teacher_paths
from mmdist.utils.workdir import check_work_dir

#: Where the restart command puts the new learning rate.
LR_KEY = 'optim_wrapper.optimizer.lr'
#: The placeholder the user replaces with it.
NEW_LR = 'NEW_LR'


class RawDictAction(DictAction):
    """MMEngine's ``DictAction`` that also keeps the raw ``key=value``
    strings (in ``cfg_options_raw``): a restart command repeats them as
    typed."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        raw = list(getattr(namespace, 'cfg_options_raw', None) or [])
        setattr(namespace, 'cfg_options_raw', raw + list(values))


def restart_command(args: argparse.Namespace, work_dir: str,
                    restart_from: Optional[str], has_lr: bool) -> str:
    """The command that restarts a diverged run as its error advises.

    The run's own arguments, minus ``--resume`` (it would restore the old
    optimizer state and learning rate), in a new work dir, with the
    weights of ``restart_from`` (``load_from``, ``resume=False``) and the
    learning rate left as :data:`NEW_LR` to fill in.

    Args:
        args (argparse.Namespace): This run's parsed arguments.
        work_dir (str): This run's work dir.
        restart_from (str, optional): Checkpoint whose weights to start
            from; None starts from scratch.
        has_lr (bool): Whether the config has :data:`LR_KEY`.

    Returns:
        str: A shell command line.
    """
    base = work_dir.rstrip(os.sep) + '_restart'
    new_dir, n = base, 1
    while osp.exists(new_dir):
        n += 1
        new_dir = f'{base}{n}'
    replaced = {'load_from', 'resume', 'work_dir', LR_KEY}
    options = [
        item for item in (getattr(args, 'cfg_options_raw', None) or [])
        if item.split('=', 1)[0] not in replaced
    ]
    if restart_from is not None:
        options += [f'load_from={restart_from}', 'resume=False']
    if has_lr:
        options.append(f'{LR_KEY}={NEW_LR}')
    argv = [args.script, args.config, '--work-dir', new_dir]
    argv += ['--amp'] if args.amp else []
    argv += ['--auto-scale-lr'] if args.auto_scale_lr else []
    argv += ['--no-fault-tolerance'] if args.no_fault_tolerance else []
    if args.launcher != 'none':
        argv += ['--launcher', args.launcher]
    if options:
        argv += ['--cfg-options', *options]
    launch = [sys.executable]
    if args.launcher == 'pytorch':
        launch += [
            '-m', 'torch.distributed.run', '--nproc_per_node',
            os.environ.get('LOCAL_WORLD_SIZE', '1')
        ]
    return shlex.join(launch + argv)


def restart_advice(args: argparse.Namespace, cfg: Config,
                   error: TrainingDiverged) -> str:
    """The sentence appended to a divergence error by ``tools/train.py``.

    Args:
        args (argparse.Namespace): This run's parsed arguments.
        cfg (Config): This run's config.
        error (TrainingDiverged): The error, with the checkpoint to
            restart from.

    Returns:
        str: The restart command and what to fill in.
    """
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    has_lr = 'lr' in optimizer
    command = restart_command(args, cfg.work_dir, error.restart_from, has_lr)
    start = (f'from the weights of {error.restart_from}'
             if error.restart_from else 'from scratch')
    # srun / mpirun start the processes themselves.
    how = (f' (under {args.launcher} as before)'
           if args.launcher in ('slurm', 'mpi') else '')
    if not has_lr:
        return (f'To restart {start}, lower the learning rate in the config '
                f'and run{how}: `{command}`')
    lr = optimizer['lr']
    lr = f'{lr:g}' if isinstance(lr, (int, float)) else str(lr)
    scaled = (' (before --auto-scale-lr scales it)'
              if args.auto_scale_lr else '')
    return (f'To restart {start} with a fresh optimizer and schedule, '
            f'run{how}: `{command}` replacing {NEW_LR} with a learning rate '
            f'below {lr}, the configured one{scaled}.')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and models')
    parser.add_argument(
        '--amp', action='store_true', help='mixed precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual batch size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or, when no path is given, from '
        'the newest checkpoint in the work_dir that loads')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=RawDictAction,
        help='override config settings, e.g. key=value')
    parser.add_argument(
        '--no-fault-tolerance',
        action='store_true',
        help="train with the config's own hooks and loop: no "
        'SafeCheckpointHook, PreemptionHook, DivergenceGuardHook or '
        f'resumable epoch loop (same as {FAULT_TOLERANCE_KEY}=False in the '
        'config)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    args.script = sys.argv[0]  # as typed, for the restart command
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    resolve_teacher_paths(cfg, args.config)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    check_work_dir(cfg.work_dir)
    if args.amp:
        if not torch.cuda.is_available():
            # MMEngine would fail later, inside the Runner, with the same
            # sentence; say it before building anything.
            raise SystemExit('--amp: AmpOptimizerWrapper is only available '
                             'training on gpu (no CUDA device found)')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.get(
                'auto_scale_lr', {}):
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr with '
                               'base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.launcher == 'pytorch':
        cpu_launch_config(cfg)
    if args.no_fault_tolerance:
        # Kept in the config the run dumps, so a resume stays without it.
        cfg[FAULT_TOLERANCE_KEY] = False
    changes = enable_fault_tolerance(cfg)

    runner = (
        Runner.from_cfg(cfg)
        if 'runner_type' not in cfg else RUNNERS.build(cfg))
    # After the Runner is built: its logger writes to the work dir's log.
    logger = MMLogger.get_current_instance()
    for change in changes:
        logger.info(f'fault tolerance: {change}')
    if changes:
        logger.info('fault tolerance: --no-fault-tolerance or '
                    f'{FAULT_TOLERANCE_KEY} = False in the config turns '
                    'these off')
    try:
        runner.train()
    except TrainingDiverged as error:
        advice = restart_advice(args, cfg, error)
        logger.error(advice)
        error.args = (f'{error.args[0]} {advice}', )
        raise
    finally:
        # Tear the process group down before interpreter exit: gloo's
        # threads otherwise may abort the process at shutdown.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    main()
