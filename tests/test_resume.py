"""A distillation run killed with SIGKILL after a checkpoint and resumed
ends with the same student weights as an uninterrupted run."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO, run_tool
from test_e2e_classification import tiny_classification_config


def deterministic_config(tmp_path):
    """The tiny classification distillation with no random augmentation
    (MMEngine does not checkpoint the augmentation RNG) and iteration-based
    checkpoints."""
    from mmengine.config import Config
    path = tiny_classification_config(tmp_path)
    cfg = Config.fromfile(str(path))
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=64, edge='short'),
        dict(type='CenterCrop', crop_size=64),
        dict(type='PackInputs')
    ]
    cfg.train_dataloader.dataset.pipeline = pipeline
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg = dict(by_epoch=False, max_iters=8, val_interval=100)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=2, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False)
    cfg.env_cfg = dict(
        cudnn_benchmark=False,
        mp_cfg=dict(mp_start_method='fork'),
        dist_cfg=dict(backend='gloo'))
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.dump(str(path))
    return path


def student_weights(path):
    state = torch.load(path, weights_only=True)['state_dict']
    return {k: v for k, v in state.items() if k.startswith('student.')}


def assert_same_student(a, b):
    """The student weights of checkpoints ``a`` and ``b`` agree."""
    a, b = student_weights(a), student_weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.heavy
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    config = deterministic_config(tmp_path)
    run_tool('train.py', config, '--work-dir', tmp_path / 'straight')

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([
        sys.executable,
        str(REPO / 'tools' / 'train.py'),
        str(config), '--work-dir',
        str(killed)
    ],
                            cwd=REPO,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))
    deadline = time.time() + 600
    last = killed / 'last_checkpoint'  # written once a checkpoint is whole
    while not (last.exists() and 'iter_4' in last.read_text()):
        assert proc.poll() is None, 'training ended before the kill'
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'iter_8.pth').exists()

    out = run_tool('train.py', config, '--work-dir', killed, '--resume')
    log = out.stdout + out.stderr
    assert 'resumed' in log
    # The teacher came back from its own checkpoint, not the student's.
    assert 'teacher.pth' in log

    assert_same_student(tmp_path / 'straight' / 'iter_8.pth',
                        killed / 'iter_8.pth')


@pytest.mark.heavy
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    """SIGTERM inside an epoch of the distillation: a checkpoint at the end
    of the iteration, exit code 143, and a resumed run that trains the rest
    of the epoch in the sampler's order, ending with the same student."""
    from mmengine.config import Config

    from mmdist.engine import PREEMPTED_EXIT_CODE
    path = deterministic_config(tmp_path)
    cfg = Config.fromfile(str(path))
    cfg.train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=100)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=1, by_epoch=True)
    cfg.log_processor = dict(by_epoch=True)
    cfg.dump(str(path))
    run_tool('train.py', path, '--work-dir', tmp_path / 'straight')

    work = tmp_path / 'stopped'
    log_path = tmp_path / 'stopped.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([
            sys.executable,
            str(REPO / 'tools' / 'train.py'),
            str(path), '--work-dir',
            str(work)
        ],
                                cwd=REPO,
                                stdout=log,
                                stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))
        deadline = time.time() + 600
        # MMEngine pads the batch number: "Epoch(train) [2][ 3/10]".
        while not re.search(r'Epoch\(train\) \[2\]\[ *3/',
                            log_path.read_text()):
            assert proc.poll() is None, 'training ended before the signal'
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(600) == PREEMPTED_EXIT_CODE, log_path.read_text()
    assert 'SIGTERM received' in log_path.read_text()
    assert not (work / 'epoch_2.pth').exists()
    stopped_at = (work / 'last_checkpoint').read_text().strip()

    out = run_tool('train.py', path, '--work-dir', work, '--resume')
    log = out.stdout + out.stderr
    assert f'Load checkpoint from {stopped_at}' in log
    assert 'Resuming inside epoch 2: skipping its first' in log
    assert_same_student(tmp_path / 'straight' / 'epoch_2.pth',
                        work / 'epoch_2.pth')


# ----------------------------------------- the engine parts in any config
def _toy_runner(work_dir, train_cfg, checkpoint, **kwargs):
    """The toy Runner of test_checkpoint.py, shuffled, with momentum."""
    from test_checkpoint import toy_runner
    return toy_runner(
        work_dir,
        train_cfg,
        checkpoint,
        shuffle=True,
        batch_size=2,
        optimizer=dict(type='SGD', lr=0.05, momentum=0.9),
        **kwargs)


def test_safe_checkpoint_hook_in_a_plain_config(tmp_path):
    """By type name in any MMEngine config: the same files as
    CheckpointHook (best and kept ones included), written atomically."""
    hook = dict(
        type='mmdist.SafeCheckpointHook',
        interval=1,
        by_epoch=True,
        max_keep_ckpts=2,
        save_best='mae',
        rule='less')
    runner = _toy_runner(tmp_path,
                         dict(by_epoch=True, max_epochs=3, val_interval=1),
                         hook)
    runner.train()
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == '.pth')
    assert len([n for n in names if n.startswith('best_mae_epoch_')]) == 1
    assert [n for n in names
            if not n.startswith('best_')] == ['epoch_2.pth', 'epoch_3.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path /
                                                             'epoch_3.pth')
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_epoch_loop_resumes_a_mid_epoch_checkpoint(tmp_path):
    """An iteration-interval checkpoint inside an epoch (stock MMEngine
    writes these too) resumes inside the epoch with the shuffled order:
    same weights as the run that went on."""
    train_cfg = dict(
        type='mmdist.ResumableEpochBasedTrainLoop',
        max_epochs=2,
        val_interval=10)
    hook = dict(type='mmdist.SafeCheckpointHook', interval=3, by_epoch=False)
    _toy_runner(tmp_path / 'a', train_cfg, hook).train()  # iter_3 ... 16
    resumed = _toy_runner(
        tmp_path / 'b',
        train_cfg,
        hook,
        resume=True,
        load_from=str(tmp_path / 'a' / 'iter_9.pth'))
    resumed.train()
    assert resumed.iter == 16
    a = torch.load(tmp_path / 'a' / 'iter_16.pth', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'iter_16.pth', weights_only=True)
    for key in a['state_dict']:
        assert torch.equal(a['state_dict'][key], b['state_dict'][key])


def test_enable_fault_tolerance_keeps_the_arguments():
    from mmengine.config import Config

    from mmdist.engine import enable_fault_tolerance
    cfg = Config(
        dict(
            default_hooks=dict(
                checkpoint=dict(
                    type='CheckpointHook',
                    interval=2,
                    max_keep_ckpts=3,
                    save_best='auto')),
            train_cfg=dict(by_epoch=True, max_epochs=12, val_interval=1)))
    enable_fault_tolerance(cfg)
    assert cfg.default_hooks.checkpoint == dict(
        type='mmdist.SafeCheckpointHook',
        interval=2,
        max_keep_ckpts=3,
        save_best='auto')
    assert cfg.custom_hooks == [
        dict(type='mmdist.PreemptionHook'),
        dict(type='mmdist.DivergenceGuardHook')
    ]
    assert cfg.train_cfg == dict(
        type='mmdist.ResumableEpochBasedTrainLoop',
        max_epochs=12,
        val_interval=1)
    enable_fault_tolerance(cfg)  # idempotent
    assert len(cfg.custom_hooks) == 2

    # Custom parts and switched-off checkpoints are left alone.
    cfg = Config(
        dict(
            default_hooks=dict(checkpoint=None),
            train_cfg=dict(type='IterBasedTrainLoop', max_iters=10)))
    enable_fault_tolerance(cfg)
    assert cfg.default_hooks.checkpoint is None
    assert cfg.custom_hooks == [dict(type='mmdist.DivergenceGuardHook')]
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
