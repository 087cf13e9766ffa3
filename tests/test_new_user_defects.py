"""Defects a new user hit (issue 23): connector level counts, schedules in
iteration-based loops, the divergence guard, ``tools/test.py --teacher`` on
a distillation checkpoint, the demo's plots and the shell tools' Python."""
import math
import os
import re
import shutil
import stat
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from torch.utils.data import Dataset

from helpers import REPO
from mmdist.distillers.terms import DistillTerm
from mmdist.engine import (DistillWeightHook, DivergenceGuardHook,
                           TrainingDiverged, enable_fault_tolerance)
from test_checkpoint import ToyData, ToyMetric, ToyModel
from test_e2e_classification import tiny_classification_config


# ------------------------------------------------- 1. connector level count
@pytest.mark.parametrize('levels', [3, 6])
def test_connector_level_count_must_match_the_modules(levels):
    """A 5-level connector on a module that gives 3 (or 6) levels stops
    the first step naming both modules and both counts (3 was accepted:
    two convolutions never got a gradient and DDP crashed)."""
    term = DistillTerm(
        'neck',
        'neck',
        dict(type='mmdist.FeatureMSELoss'),
        name='mimic',
        connector=dict(
            type='mmdist.ConvConnector',
            in_channels=4,
            out_channels=4,
            num_levels=5))
    features = [
        torch.randn(2, 4, 8 >> (i % 3), 8 >> (i % 3)) for i in range(levels)
    ]
    with pytest.raises(
            ValueError,
            match=rf"'mimic': student neck and teacher neck "
            rf'give {levels} levels, but its connector has 5 '
            rf'\(num_levels=5\); set num_levels={levels}'):
        term.losses(features, [f.clone() for f in features], None)
    term.connector = term.connector.__class__(4, 4, num_levels=levels)
    assert torch.isfinite(term.losses(features, features, None)['loss_mimic'])


# -------------------------------------------------------------- schedules
def iteration_config(tmp_path, hook, max_iters=2):
    """The tiny distillation config, iteration-based with an
    InfiniteSampler (as MMSeg's configs are)."""
    cfg = Config.fromfile(str(tiny_classification_config(tmp_path)))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=max_iters, val_interval=1000)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=1000, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False)
    cfg.custom_hooks = [hook]
    return cfg


def test_by_epoch_schedule_refused_in_an_iteration_loop(tmp_path):
    """by_epoch=True never advanced with an IterBasedTrainLoop: refused
    before the first step, saying what one pass is in iterations."""
    cfg = iteration_config(
        tmp_path, dict(type='mmdist.DistillWeightHook', by_epoch=True, stop=1))
    runner = Runner.from_cfg(cfg)
    calls = []
    runner.model.teacher.backbone.register_forward_hook(
        lambda *a: calls.append(runner.iter))
    with pytest.raises(
            ValueError,
            match=r'by_epoch=True\) needs an epoch-'
            r'based train loop, but this run uses '
            r'IterBasedTrainLoop.* one pass over the training '
            r'data is 5 iterations'):
        runner.train()
    assert calls == []


def test_stop_zero_and_the_errors_in_the_users_terms():
    """stop=0 with a constant or step schedule is "no distillation"; with
    linear / cosine a stop before the schedule begins says so."""
    assert DistillWeightHook(stop=0).multiplier(0) == 0.0
    assert DistillWeightHook(
        schedule='step', milestones=[2], stop=0).multiplier(5) == 0.0
    with pytest.raises(
            ValueError,
            match=r"stop=0 ends distillation before "
            r"the linear schedule starts \(begin=0\).*"
            r"schedule='constant' with stop=0"):
        DistillWeightHook(schedule='linear', end=8, stop=0)


def log_lines(work_dir) -> str:
    (log, ) = work_dir.glob('*/*.log')
    return log.read_text()


def scalars(work_dir) -> list:
    import json
    (path, ) = work_dir.glob('*/vis_data/scalars.json')
    return [
        json.loads(line) for line in path.read_text().splitlines()
        if '"loss"' in line
    ]


@pytest.mark.heavy
def test_warmup_from_zero_and_stop_log_what_happens(tmp_path):
    """A warm-up from 0 does not log "distillation stopped" at the start;
    after stop every smoothed loss restarts its window together (the
    distillation parts' windows were dropped and the total's was not, so
    the logged total was no longer the sum of the logged parts)."""
    cfg = iteration_config(
        tmp_path,
        dict(
            type='mmdist.DistillWeightHook', schedule='linear', end=4, stop=6),
        max_iters=10)
    cfg.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(cfg)
    runner.train()
    text = log_lines(tmp_path / 'work')
    stops = re.findall(r'distillation stopped.*', text)
    assert len(stops) == 1 and 'at iteration 6' in stops[0], stops
    assert 'distillation weight 0 (linear schedule) (iteration 0' in text
    # Every smoothed loss holds the 4 iterations after the stop only.
    windows = {
        key: len(buffer.data[0])
        for key, buffer in runner.message_hub.log_scalars.items()
        if key.startswith('train/') and 'loss' in key
    }
    assert windows == {
        'train/loss': 4,
        'train/loss_cls': 4,
        'train/loss_dist': 4
    }, windows
    logged = scalars(tmp_path / 'work')
    assert [line['loss_dist'] for line in logged][6:] == [0.0] * 4


# ------------------------------------------------------ divergence guard
def stub_runner(model, name):
    """What DivergenceGuardHook reads of a runner."""
    return SimpleNamespace(
        model=model,
        iter=0,
        message_hub=MessageHub.get_instance(f'{name}_{time.time_ns()}'),
        logger=MMLogger.get_instance(f'{name}_{time.time_ns()}'))


def test_guard_counts_nonfinite_losses_in_a_row():
    """A NaN loss with finite weights counts; a finite loss resets the
    count; the stop names the iterations and how the divergence began
    (a runner without a checkpoint hook has no checkpoint to advise)."""
    model = torch.nn.Linear(2, 1)
    runner = stub_runner(model, 'guard_count')
    runner.message_hub.update_info('last_ckpt', 'work/iter_2.pth')
    hook = DivergenceGuardHook(max_nonfinite_iters=3)
    losses = [1.0, math.nan, math.inf, 0.5, math.nan, math.nan]
    for i, loss in enumerate(losses):
        runner.iter = i
        hook.after_train_iter(runner, i, outputs=dict(loss=torch.tensor(loss)))
    assert hook.in_a_row == 2
    runner.iter = 6
    with pytest.raises(
            TrainingDiverged,
            match=r'not finite \(nan\) in 3 iteration\(s\) in a '
            r'row \(iterations 5 to 7\) and the weights are still '
            r'finite\. Stopped after iteration 7.*No '
            r'checkpoint predates the divergence \(the weights '
            r'after iteration 4 gave the loss nan at iteration '
            r'5\)'):
        hook.after_train_iter(
            runner, 6, outputs=dict(loss=torch.tensor(math.nan)))


def test_guard_stops_at_once_on_nonfinite_weights():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight[0, 1] = math.inf
    runner = stub_runner(model, 'guard_weights')
    hook = DivergenceGuardHook(max_nonfinite_iters=10)
    runner.iter = 3
    with pytest.raises(
            TrainingDiverged,
            match=r'\(iteration 4\) and the weights are not '
            r'finite \(weight\).*No checkpoint predates'):
        hook.after_train_iter(
            runner, 3, outputs=dict(loss=torch.tensor(math.nan)))
    with pytest.raises(ValueError, match='max_nonfinite_iters'):
        DivergenceGuardHook(max_nonfinite_iters=0)


def _guard_worker(rank, port, out_dir):
    """One rank of a 2-process group: rank 0 sees a NaN loss at iteration
    2, rank 1 at iteration 3."""
    import datetime

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo',
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60))
    try:
        runner = stub_runner(torch.nn.Linear(2, 1), f'ddp_guard_{rank}')
        hook = DivergenceGuardHook(max_nonfinite_iters=2)
        losses = [1.0, 1.0, 1.0, 1.0]
        losses[1 + rank] = math.nan
        stopped = None
        for i, loss in enumerate(losses):
            runner.iter = i
            try:
                hook.after_train_iter(
                    runner, i, outputs=dict(loss=torch.tensor(loss)))
            except TrainingDiverged:
                stopped = i
                break
        torch.save(
            dict(stopped=stopped), os.path.join(out_dir, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


def test_guard_ranks_stop_together(tmp_path):
    """A NaN loss on either rank counts on both, so both stop at the same
    iteration (a rank stopping alone would leave the other waiting)."""
    import random

    import torch.multiprocessing as mp
    mp.spawn(
        _guard_worker,
        args=(random.randint(20000, 40000), str(tmp_path)),
        nprocs=2,
        join=True)
    stopped = [
        torch.load(tmp_path / f'rank{r}.pth')['stopped'] for r in range(2)
    ]
    assert stopped == [2, 2]


class OverflowData(Dataset):
    """Toy regression data; sample ``i`` in ``huge`` is scaled so that its
    loss is finite but the scaled gradient overflows, ``i`` in ``nan``
    gives a NaN loss."""

    def __init__(self, huge=(), nan=()):
        base = ToyData()
        self.x, self.y = base.x.clone(), base.y.clone()
        for i in huge:
            self.x[i] *= 1e18
        for i in nan:
            self.x[i] = math.nan

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


class ScaledOptimWrapper(OptimWrapper):
    """The dynamic loss scaling of MMEngine's AmpOptimWrapper on the CPU
    (which AmpOptimWrapper refuses): a step whose scaled gradients are not
    finite is skipped and the scale lowered."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.0**16)

    def backward(self, loss, **kwargs):
        self.loss_scaler.scale(loss).backward(**kwargs)

    def step(self, **kwargs):
        self.loss_scaler.unscale_(self.optimizer)
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update()


def toy_train(work_dir,
              dataset,
              max_iters,
              optimizer=None,
              optim_type=OptimWrapper,
              checkpoint_interval=1,
              param_scheduler=None):
    """Train the toy model through the tools' set-up (fault tolerance
    and divergence guard by default); returns the runner."""
    cfg = Config(
        dict(
            default_hooks=dict(
                checkpoint=dict(
                    type='CheckpointHook',
                    interval=checkpoint_interval,
                    by_epoch=False,
                    max_keep_ckpts=1)),
            train_cfg=dict(
                by_epoch=False, max_iters=max_iters, val_interval=1000)))
    enable_fault_tolerance(cfg)
    runner = Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=dataset,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=1,
            num_workers=0),
        train_cfg=cfg.train_cfg,
        val_dataloader=dict(
            dataset=ToyData(),
            batch_size=4,
            sampler=dict(type='DefaultSampler', shuffle=False)),
        val_cfg=dict(),
        val_evaluator=[ToyMetric()],
        optim_wrapper=dict(
            type=optim_type, optimizer=optimizer or dict(type='SGD', lr=0.01)),
        default_hooks=cfg.default_hooks,
        custom_hooks=cfg.custom_hooks,
        param_scheduler=param_scheduler,
        randomness=dict(seed=0),
        experiment_name=f'toy_{time.time_ns()}')
    return runner


def test_loss_scaler_skips_do_not_count(tmp_path):
    """Under loss scaling a finite loss whose scaled gradients overflow is
    skipped by the scaler: normal, not counted; a NaN loss counts but the
    run goes on while the weights stay finite and the count is below the
    limit."""
    runner = toy_train(
        tmp_path,
        OverflowData(huge=(1, 2, 3), nan=(5, )),
        max_iters=8,
        optim_type=ScaledOptimWrapper)
    guard = next(h for h in runner.hooks if isinstance(h, DivergenceGuardHook))
    seen = []

    class Probe(Hook):

        def after_train_iter(self, runner, *args, **kwargs):
            seen.append(
                (runner.optim_wrapper.loss_scaler.get_scale(), guard.in_a_row))

    runner.register_hook(Probe(), 'LOWEST')
    runner.train()
    assert runner.iter == 8
    scales = [scale for scale, _ in seen]
    # Iterations 2-4 and 6 were skipped by the scaler (scale halved).
    assert [b < a for a, b in zip(scales, scales[1:])
            ] == [True, True, True, False, True, False, False]
    assert [count for _, count in seen] == [0, 0, 0, 0, 0, 1, 0, 0]
    assert not any(torch.isnan(p).any() for p in runner.model.parameters())


def test_diverged_run_stops_and_keeps_the_good_checkpoint(tmp_path):
    """lr jumps to inf at iteration 3: the checkpoint of iteration 3 is
    not written, iter_2.pth (max_keep_ckpts=1) is kept, and the run stops
    with an error advising a restart from its weights."""
    runner = toy_train(
        tmp_path,
        ToyData(),
        max_iters=8,
        param_scheduler=dict(
            type='MultiStepLR', by_epoch=False, milestones=[2],
            gamma=math.inf))
    with pytest.raises(
            TrainingDiverged,
            match=r'after 3 training iterations the weights are '
            r'not finite \(linear\.[a-z, .]*\); '
            r'iter_3\.pth is not written and no checkpoint is '
            r'removed\. The last checkpoint before the '
            r'divergence \(the weights after iteration 3 are not '
            r'finite\) is .*iter_2\.pth \(after iteration 2; '
            r'finite weights.*load_from=.*iter_2\.pth '
            r'resume=False'):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('iter_2.pth')
    state = torch.load(tmp_path / 'iter_2.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values())


def test_guard_stops_a_nan_run_between_checkpoints(tmp_path):
    """Without a checkpoint due, the guard stops at the first NaN loss
    (the weights are NaN, nothing can recover)."""
    runner = toy_train(
        tmp_path,
        ToyData(),
        max_iters=8,
        optimizer=dict(type='SGD', lr=math.inf),
        checkpoint_interval=100)
    with pytest.raises(
            TrainingDiverged,
            match=r'\(iteration 2\) and the weights are not '
            r'finite .*No checkpoint predates the divergence'):
        runner.train()
    assert runner.iter == 1
    assert not list(tmp_path.glob('*.pth'))


@pytest.mark.heavy
def test_train_tool_stops_a_run_with_lr_inf(tmp_path):
    """The issue's run through tools/train.py: `lr=inf` ended with status
    0 and NaN checkpoints; now it stops at iteration 2 with a non-zero
    status, and no checkpoint is written."""
    import sys
    config = tiny_classification_config(tmp_path)
    work = tmp_path / 'work'
    proc = subprocess.run([
        sys.executable,
        str(REPO / 'tools' / 'train.py'),
        str(config), '--work-dir',
        str(work), '--cfg-options', 'optim_wrapper.optimizer.lr=inf'
    ],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=900)
    assert proc.returncode != 0
    assert re.search(
        r'TrainingDiverged: Training diverged: the total loss '
        r'was not finite \((nan|inf)\) in 1 iteration\(s\) in a '
        r'row \(iteration 2\) and the weights are not finite',
        proc.stderr), proc.stderr[-3000:]
    assert not list(work.glob('*.pth'))


def test_config_guard_settings_are_kept():
    cfg = Config(
        dict(custom_hooks=[
            dict(type='mmdist.DivergenceGuardHook', max_nonfinite_iters=50)
        ]))
    enable_fault_tolerance(cfg)
    guards = [
        h for h in cfg.custom_hooks
        if h['type'] == 'mmdist.DivergenceGuardHook'
    ]
    assert guards == [
        dict(type='mmdist.DivergenceGuardHook', max_nonfinite_iters=50)
    ]


# ---------------------------------------------- tools/test.py --teacher
def test_teacher_flag_with_a_distillation_checkpoint_says_so(tmp_path):
    import sys
    config = tiny_classification_config(tmp_path)
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save(
        dict(state_dict={'student.head.fc.weight': torch.zeros(2)}), ckpt)
    proc = subprocess.run([
        sys.executable,
        str(REPO / 'tools' / 'test.py'),
        str(config),
        str(ckpt), '--teacher', '--work-dir',
        str(tmp_path / 'test')
    ],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert (f'{ckpt} is a distillation checkpoint' in proc.stderr
            and "--teacher evaluates the teacher's own weights "
            '(teacher_ckpt' in proc.stderr), proc.stderr[-3000:]
    assert 'Unexpected key' not in proc.stderr


# ------------------------------------------------------------ demo plots
def demo_results(seeds):
    """Results shaped like tools/misc/demo.py's, ``seeds`` seeds."""
    curve = [[50, 0.1], [100, 0.2]]
    runs = [dict(metric=0.2)] * seeds
    result = dict(
        seeds=runs,
        curve=curve,
        curve_std=[[50, 0.01], [100, 0.01]],
        loss=[],
        loss_std=[],
        metric=0.2)
    out = {v: dict(result) for v in ('student', 'kd', 'dist')}
    out['teacher'] = dict(result, metric=0.5)
    out['kd'] = dict(
        result, loss=[[10, 2.0], [20, 1.0]], loss_std=[[10, 0.1], [20, 0.1]])
    out['dist'] = dict(
        result, loss=[[10, 0.6], [20, 0.4]], loss_std=[[10, 0.1], [20, 0.1]])
    return out


@pytest.mark.parametrize('seeds', [1, 3])
def test_demo_plots_keep_one_colour_per_variant(seeds):
    """Each variant has one colour in every plot, and KD's KL and DIST's
    1 - Pearson get axes of their own."""
    import matplotlib.pyplot as plt

    from test_demo import _demo_tool
    demo = _demo_tool()
    COLORS, LABELS = demo.COLORS, demo.LABELS
    figs = demo.figures('seg', demo_results(seeds), demo.TASKS['seg'])
    metric, loss = figs['seg_val_metric.png'], figs['seg_distill_loss.png']
    seen = {}
    for fig in (metric, loss):
        for ax in fig.axes:
            for line in ax.get_lines():
                seen.setdefault(line.get_label(), set()).add(line.get_color())
    for variant in ('kd', 'dist', 'student', 'teacher'):
        assert seen[LABELS[variant]] == {COLORS[variant]}, variant
    assert len(loss.axes) == 2
    assert [ax.get_lines()[0].get_label()
            for ax in loss.axes] == [LABELS['kd'], LABELS['dist']]
    assert 'KL' in loss.axes[0].get_ylabel()
    assert 'Pearson' in loss.axes[1].get_ylabel()
    for fig in figs.values():
        plt.close(fig)


# ------------------------------------------------- shell tools' Python
def fake_checkout(tmp_path, with_venv):
    """tools/dist_train.sh in a checkout whose .venv python (and a python
    on PATH) only print who they are."""
    root = tmp_path / 'checkout'
    (root / 'tools').mkdir(parents=True)
    for name in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh'):
        shutil.copy(REPO / 'tools' / name, root / 'tools' / name)
    fakes = [(tmp_path / 'bin' / 'python', 'path-python'),
             (tmp_path / 'env' / 'python', 'env-python')]
    if with_venv:
        fakes.append((root / '.venv' / 'bin' / 'python', 'venv-python'))
    for path, label in fakes:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho {label} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return root


@pytest.mark.parametrize('with_venv,python,expected', [
    (True, None, 'venv-python'),
    (False, None, 'path-python'),
    (True, 'env', 'env-python'),
])
def test_shell_tools_use_the_checkouts_venv(tmp_path, with_venv, python,
                                            expected):
    root = fake_checkout(tmp_path, with_venv)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env['PATH'] = f'{tmp_path / "bin"}:{env["PATH"]}'
    if python:
        env['PYTHON'] = str(tmp_path / python / 'python')
    for tool, args in (('dist_train.sh', ['cfg.py', '2']),
                       ('dist_test.sh', ['cfg.py', 'x.pth', '2'])):
        out = subprocess.run(
            ['bash', str(root / 'tools' / tool)] + args,
            env=env,
            capture_output=True,
            text=True,
            check=True).stdout
        assert out.startswith(f'{expected} -m torch.distributed.run '), out
