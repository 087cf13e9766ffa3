"""Checkpoints on torch >= 2.6: MMEngine's own load; anything else refused."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
from torch.utils.data import Dataset

from mmdist.utils import UnsafeCheckpointError


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        inputs = torch.stack(inputs)
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - torch.stack(data_samples))**2).mean())
        return [(o, d) for o, d in zip(out, data_samples)]


class ToyData(Dataset):

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 2, generator=gen)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


class ToyMetric(BaseMetric):

    def process(self, data_batch, data_samples):
        self.results += [float((o - t).abs()) for o, t in data_samples]

    def compute_metrics(self, results):
        return dict(mae=float(np.mean(results)))


def make_runner(work_dir, max_iters, **kwargs):
    loader = dict(
        dataset=ToyData(),
        sampler=dict(type='DefaultSampler', shuffle=False),
        batch_size=4,
        num_workers=0)
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=100),
        test_dataloader=loader,
        test_cfg=dict(),
        test_evaluator=ToyMetric(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook', interval=2, by_epoch=False)),
        randomness=dict(seed=0),
        experiment_name=f'toy_{max_iters}_{kwargs.get("resume", False)}',
        **kwargs)


def test_runner_checkpoint_resumes_and_tests(tmp_path):
    runner = make_runner(tmp_path, 4)
    runner.train()
    ckpt = tmp_path / 'iter_2.pth'
    assert ckpt.is_file()
    # Plain torch.load with weights_only=True (torch's default) works.
    loaded = torch.load(ckpt, weights_only=True)
    assert 'message_hub' in loaded and loaded['meta']['iter'] == 2

    resumed = make_runner(tmp_path, 6, resume=True, load_from=str(ckpt))
    resumed.train()
    assert resumed.iter == 6

    tester = make_runner(tmp_path, 6, load_from=str(tmp_path / 'iter_6.pth'))
    metrics = tester.test()
    assert np.isfinite(metrics['mae'])


class Payload:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_unsafe_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save(
        dict(state_dict={'w': torch.zeros(1)}, meta=Payload(marker)), path)
    with pytest.raises(UnsafeCheckpointError) as info:
        _load_checkpoint(str(path), map_location='cpu')
    message = str(info.value)
    assert 'system' in message and str(path) in message
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1' in message
    assert not marker.exists()
    assert isinstance(info.value, pickle.UnpicklingError)


def test_truncated_checkpoint_names_the_file(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save(dict(state_dict={'w': torch.zeros(100)}), good)
    bad = tmp_path / 'truncated.pth'
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(RuntimeError, match='truncated.pth'):
        CheckpointLoader.load_checkpoint(str(bad), map_location='cpu')


def test_runner_checkpoint_loads_in_a_fresh_process(tmp_path):
    """HistoryBuffer's statistics methods resolve before any buffer
    exists (as in tools/test.py)."""
    import subprocess
    import sys
    make_runner(tmp_path, 2).train()
    code = ('import mmdist, torch, sys; '
            'ckpt = torch.load(sys.argv[1], weights_only=True); '
            'print(ckpt["meta"]["iter"])')
    out = subprocess.run([sys.executable, '-c', code,
                          str(tmp_path / 'iter_2.pth')],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '2'


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save(dict(meta=np.zeros(3).tofile), path)
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        _load_checkpoint(str(path), map_location='cpu')
