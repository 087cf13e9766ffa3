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


def toy_runner(work_dir,
               train_cfg,
               checkpoint,
               shuffle=False,
               batch_size=4,
               optimizer=None,
               **kwargs):
    """A Runner that trains, validates and tests the toy model."""
    import time
    loader = dict(
        dataset=ToyData(),
        sampler=dict(type='DefaultSampler', shuffle=shuffle),
        batch_size=batch_size,
        num_workers=0)
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        train_cfg=train_cfg,
        val_dataloader=loader,
        val_cfg=dict(),
        val_evaluator=[ToyMetric()],
        test_dataloader=loader,
        test_cfg=dict(),
        test_evaluator=[ToyMetric()],
        optim_wrapper=dict(optimizer=optimizer or dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=checkpoint),
        randomness=dict(seed=0),
        experiment_name=f'toy_{time.time_ns()}',
        **kwargs)


def make_runner(work_dir, max_iters, **kwargs):
    return toy_runner(
        work_dir, dict(by_epoch=False, max_iters=max_iters, val_interval=100),
        dict(type='CheckpointHook', interval=2, by_epoch=False), **kwargs)


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
    out = subprocess.run(
        [sys.executable, '-c', code,
         str(tmp_path / 'iter_2.pth')],
        capture_output=True,
        text=True,
        check=True)
    assert out.stdout.strip() == '2'


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save(dict(meta=np.zeros(3).tofile), path)
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        _load_checkpoint(str(path), map_location='cpu')


# ------------------------------------------- files that are not checkpoints
def _write_kind(path, kind):
    """Write a file of ``kind`` at ``path``."""
    if kind == 'text':
        path.write_text('epoch 1: loss 0.3\nepoch 2: loss 0.2\n')
    elif kind == 'html':
        path.write_text('<!DOCTYPE html>\n<html><head><title>Sign in'
                        '</title></head><body>Log in to download</body>'
                        '</html>\n')
    elif kind == 'json':
        path.write_text('{"state_dict": {"w": [0.0, 1.0]}}')
    elif kind == 'npy':
        with open(path, 'wb') as f:
            np.save(f, np.zeros((2, 3), dtype=np.float32))
    elif kind == 'npz':
        with open(path, 'wb') as f:
            np.savez(f, w=np.zeros(3))
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated zip':
        full = path.with_suffix('.full')
        torch.save(dict(state_dict={'w': torch.zeros(1000)}), full)
        path.write_bytes(full.read_bytes()[:600])
    elif kind == 'pickle':
        with open(path, 'wb') as f:
            pickle.dump({'model': {'w': np.zeros(3)}}, f)
    else:
        raise ValueError(kind)


NOT_CHECKPOINTS = {
    'text': 'a text file',
    'html': 'an HTML page',
    'json': 'a JSON document',
    'npy': 'a numpy .npy array',
    'npz': 'a numpy .npz archive',
    'empty': 'an empty file',
    'truncated zip': 'a truncated or damaged zip archive',
    'pickle': 'a Python pickle that torch.save did not write',
}


@pytest.mark.parametrize('trust', [False, True], ids=['safe', 'trusting'])
@pytest.mark.parametrize('kind', sorted(NOT_CHECKPOINTS))
def test_not_a_checkpoint_is_named_as_such(tmp_path, monkeypatch, kind, trust):
    """Whatever the loading mode, the message names the file and what it
    is, and never suggests turning safe loading off."""
    from mmdist.utils.checkpoint import NotACheckpointError
    if trust:
        monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    path = tmp_path / 'model.pth'
    _write_kind(path, kind)
    with pytest.raises(NotACheckpointError) as info:
        _load_checkpoint(str(path), map_location='cpu')
    message = str(info.value)
    assert f'{path} is not a PyTorch checkpoint' in message
    assert NOT_CHECKPOINTS[kind] in message
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in message
    # A RuntimeError, as MMEngine's own "cannot read" errors are.
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_real_checkpoints_still_load(tmp_path, legacy):
    path = tmp_path / 'model.pth'
    torch.save(
        dict(state_dict={'w': torch.ones(2)}),
        path,
        _use_new_zipfile_serialization=not legacy)
    ckpt = _load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))


def test_unsafe_checkpoint_still_refused_as_unsafe(tmp_path):
    """The check for non-checkpoints does not swallow the refusal."""
    path = tmp_path / 'evil.pth'
    torch.save(dict(meta=Payload(tmp_path / 'pwned')), path)
    with pytest.raises(UnsafeCheckpointError, match='TORCH_FORCE_NO'):
        _load_checkpoint(str(path), map_location='cpu')
    assert not (tmp_path / 'pwned').exists()


def test_damaged_zip_checkpoint_names_the_file(tmp_path):
    """A zip checkpoint with an intact index but damaged records."""
    path = tmp_path / 'damaged.pth'
    torch.save(dict(state_dict={'w': torch.zeros(1000)}), path)
    data = bytearray(path.read_bytes())
    start = data.index(b'data.pkl') + 40
    data[start:start + 64] = b'\xff' * 64
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match='damaged.pth'):
        _load_checkpoint(str(path), map_location='cpu')


def _export_tool():
    import importlib.util

    from helpers import REPO
    spec = importlib.util.spec_from_file_location(
        'export_student',
        REPO / 'tools' / 'model_converters' / 'export_student.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_of_an_html_page_says_so(tmp_path):
    from mmdist.utils.checkpoint import NotACheckpointError
    page = tmp_path / 'iter_2.pth'
    _write_kind(page, 'html')
    with pytest.raises(NotACheckpointError, match='an HTML page'):
        _export_tool().export_student(str(page), str(tmp_path / 'out.pth'))
    assert not (tmp_path / 'out.pth').exists()


def test_load_checkpoint_of_text_says_not_a_checkpoint(tmp_path):
    """``load_checkpoint`` is what teacher_ckpt and load_from go through."""
    from mmengine.runner.checkpoint import load_checkpoint

    from mmdist.utils.checkpoint import NotACheckpointError
    path = tmp_path / 'teacher.pth'
    _write_kind(path, 'text')
    with pytest.raises(NotACheckpointError, match='teacher.pth is not'):
        load_checkpoint(torch.nn.Linear(2, 1), str(path), map_location='cpu')


# ------------------------------------------------------ export_student safety
def _distillation_checkpoint(path):
    torch.save(
        dict(
            meta=dict(iter=2),
            state_dict={
                'student.w': torch.arange(4.),
                'student.b': torch.ones(1)
            }), path)
    return path.read_bytes()


@pytest.mark.parametrize('link', ['same', 'relative', 'symlink', 'hardlink'])
def test_export_refuses_to_overwrite_its_input(tmp_path, monkeypatch, link):
    ckpt = tmp_path / 'iter_2.pth'
    before = _distillation_checkpoint(ckpt)
    out = tmp_path / 'student.pth'
    if link == 'same':
        out = ckpt
    elif link == 'relative':
        monkeypatch.chdir(tmp_path)
        out = './sub/../iter_2.pth'
        (tmp_path / 'sub').mkdir()
    elif link == 'symlink':
        out.symlink_to(ckpt)
    else:
        os.link(ckpt, out)
    with pytest.raises(ValueError, match='is the input checkpoint'):
        _export_tool().export_student(str(ckpt), str(out))
    assert ckpt.read_bytes() == before


def test_export_tool_exits_with_the_reason(tmp_path):
    from helpers import run_tool
    ckpt = tmp_path / 'iter_2.pth'
    before = _distillation_checkpoint(ckpt)
    with pytest.raises(AssertionError, match='is the input checkpoint'):
        run_tool('model_converters/export_student.py', ckpt, ckpt, timeout=120)
    assert ckpt.read_bytes() == before


def test_interrupted_export_leaves_no_partial_file(tmp_path, monkeypatch):
    """A failure in the middle of the write (disk full, a kill) leaves the
    previous output as it was and no temporary file behind."""
    import errno

    import mmdist.utils.atomic_io as atomic_io
    ckpt = tmp_path / 'iter_2.pth'
    _distillation_checkpoint(ckpt)
    out = tmp_path / 'student.pth'
    out.write_bytes(b'previous export')

    def half_then_enospc(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 half of a checkpoint')
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(atomic_io.torch, 'save', half_then_enospc)
    with pytest.raises(OSError, match='No space left'):
        _export_tool().export_student(str(ckpt), str(out))
    assert out.read_bytes() == b'previous export'
    assert sorted(
        p.name for p in tmp_path.iterdir()) == ['iter_2.pth', 'student.pth']


def test_export_writes_the_student_alone(tmp_path):
    ckpt = tmp_path / 'iter_2.pth'
    _distillation_checkpoint(ckpt)
    out = tmp_path / 'export' / 'student.pth'  # directory made on the way
    assert _export_tool().export_student(str(ckpt), str(out)) == 2
    state = torch.load(out, weights_only=True)['state_dict']
    assert torch.equal(state['w'],
                       torch.arange(4.)) and set(state) == {'w', 'b'}
    # Permissions as open() would give (a temporary file is made 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_downloaded_html_page_names_url_and_cached_file(tmp_path):
    """A URL that answers with a login page: torch.hub caches the page and
    would load it again on every run, so the message says where it is."""
    import functools
    import http.server
    import threading

    from mmdist.utils.checkpoint import NotACheckpointError
    served = tmp_path / 'served'
    served.mkdir()
    _write_kind(served / 'teacher.pth', 'html')
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/teacher.pth'
        with pytest.raises(NotACheckpointError) as info:
            _load_checkpoint(url, map_location='cpu')
    finally:
        torch.hub.set_dir(hub_dir)
        server.shutdown()
    message = str(info.value)
    assert url in message and 'an HTML page' in message
    assert str(tmp_path / 'hub' / 'checkpoints' / 'teacher.pth') in message
