"""A distillation run killed with SIGKILL after a checkpoint and resumed
ends with the same student weights as an uninterrupted run."""
import os
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
    cfg.env_cfg = dict(cudnn_benchmark=False,
                       mp_cfg=dict(mp_start_method='fork'),
                       dist_cfg=dict(backend='gloo'))
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.dump(str(path))
    return path


def student_weights(path):
    state = torch.load(path, weights_only=True)['state_dict']
    return {k: v for k, v in state.items() if k.startswith('student.')}


@pytest.mark.heavy
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    config = deterministic_config(tmp_path)
    run_tool('train.py', config, '--work-dir', tmp_path / 'straight')

    killed = tmp_path / 'killed'
    proc = subprocess.Popen(
        [sys.executable, str(REPO / 'tools' / 'train.py'), str(config),
         '--work-dir', str(killed)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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

    straight = student_weights(tmp_path / 'straight' / 'iter_8.pth')
    resumed = student_weights(killed / 'iter_8.pth')
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key
