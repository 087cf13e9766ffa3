"""A kill at any moment loses at most the work since the last complete
checkpoint.

Training runs through ``tools/train.py`` in a subprocess on a toy model (a
linear layer on 16 fixed samples, shuffled by the seeded DefaultSampler,
SGD with momentum), which is deterministic: every interrupted run, once
resumed, must end with bitwise the same weights as an uninterrupted one.
Faults are injected from outside (SIGKILL, SIGTERM) or by a driver that
patches the atomic writer (a write that stalls half-way so a kill lands
inside it, or fails half-way with ENOSPC).
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO

PREEMPTED = 143  # mmdist.engine.PREEMPTED_EXIT_CODE, checked below

TOY_MODULE = '''
"""Toy model, data and metric for the fault-injection tests."""
import os
import time

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from torch.utils.data import Dataset


@MODELS.register_module()
class FaultToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        delay = os.environ.get(
            'TOY_TRAIN_SLEEP' if self.training else 'TOY_VAL_SLEEP')
        if delay:
            time.sleep(float(delay))
        out = self.linear(torch.stack(inputs))
        if mode == 'loss':
            target = torch.stack(data_samples)
            return dict(loss=((out - target)**2).mean())
        return [(o, t) for o, t in zip(out, data_samples)]


@DATASETS.register_module()
class FaultToyData(Dataset):
    metainfo = dict(name='toy')

    def __init__(self, size=16):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 4, generator=gen)
        self.y = self.x @ torch.tensor([[1.], [-2.], [.5], [3.]]) + .1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


@METRICS.register_module()
class FaultToyMetric(BaseMetric):

    def process(self, data_batch, data_samples):
        self.results += [float((o - t).abs()) for o, t in data_samples]

    def compute_metrics(self, results):
        return dict(mae=float(np.mean(results)))
'''

# Runs tools/train.py with the atomic writer patched: the write of the file
# named by FAULT_TARGET writes half its bytes, then stalls (FAULT=stall) or
# fails with ENOSPC (FAULT=enospc); FAULT=stall_pointer stalls the update of
# last_checkpoint to FAULT_TARGET, after the checkpoint itself is in place.
DRIVER = '''
import contextlib
import errno
import os
import os.path as osp
import runpy
import sys
import time

import mmdist.engine.checkpoint_hook as checkpoint_hook
import mmdist.utils.atomic_io as atomic_io

FAULT = os.environ['FAULT']
TARGET = os.environ['FAULT_TARGET']


class HalfWriter:

    def __init__(self, f):
        self.f = f

    def write(self, data):
        half = len(data) // 2
        self.f.write(data[:half])
        self.f.flush()
        os.fsync(self.f.fileno())
        if FAULT == 'enospc':
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        time.sleep(600)

    def __getattr__(self, name):
        return getattr(self.f, name)


open_atomic = atomic_io.atomic_open


@contextlib.contextmanager
def faulty_open(path, mode='wb'):
    with open_atomic(path, mode) as f:
        hit = osp.basename(path) == TARGET and FAULT in ('stall', 'enospc')
        yield HalfWriter(f) if hit else f


write_pointer = checkpoint_hook.atomic_write_text


def slow_pointer(text, path):
    if FAULT == 'stall_pointer' and osp.basename(text) == TARGET:
        time.sleep(600)
    write_pointer(text, path)


atomic_io.atomic_open = faulty_open
checkpoint_hook.atomic_write_text = slow_pointer
train = osp.join(os.environ['REPO'], 'tools', 'train.py')
sys.argv = [train] + sys.argv[1:]
runpy.run_path(train, run_name='__main__')
'''


def toy_config(tmp_path: Path,
               by_epoch: bool,
               workers: int = 0,
               **checkpoint) -> Path:
    """A tools/train.py config for the toy model.

    Iteration-based: 8 iterations, a checkpoint every 2, two kept.
    Epoch-based: 3 epochs of 8 iterations, validation and a checkpoint
    after every epoch. ``workers`` DataLoader workers (forked);
    ``checkpoint`` overrides the checkpoint hook.
    """
    (tmp_path / 'fault_toy.py').write_text(TOY_MODULE)
    loader = dict(
        dataset=dict(type='FaultToyData'),
        sampler=dict(type='DefaultSampler', shuffle=True),
        batch_size=2,
        num_workers=workers,
        persistent_workers=workers > 0)
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=3, val_interval=1)
        hook = dict(type='CheckpointHook', interval=1, by_epoch=True)
    else:
        train_cfg = dict(by_epoch=False, max_iters=8, val_interval=100)
        hook = dict(
            type='CheckpointHook',
            interval=2,
            by_epoch=False,
            max_keep_ckpts=2)
    hook.update(checkpoint)
    cfg = dict(
        custom_imports=dict(
            imports=['fault_toy', 'mmdist'], allow_failed_imports=False),
        model=dict(type='FaultToyModel'),
        train_dataloader=loader,
        val_dataloader=dict(
            loader, sampler=dict(type='DefaultSampler', shuffle=False)),
        val_evaluator=dict(type='FaultToyMetric'),
        val_cfg=dict(),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        default_hooks=dict(
            checkpoint=hook, logger=dict(type='LoggerHook', interval=1)),
        log_processor=dict(by_epoch=by_epoch),
        env_cfg=dict(
            dist_cfg=dict(backend='gloo'),
            mp_cfg=dict(mp_start_method='fork')),
        randomness=dict(seed=0),
    )
    name = 'toy_epoch.py' if by_epoch else 'toy_iter.py'
    path = tmp_path / name
    path.write_text(''.join(f'{k} = {v!r}\n' for k, v in cfg.items()))
    return path


def env(tmp_path: Path, **extra) -> dict:
    return dict(
        os.environ,
        PYTHONUNBUFFERED='1',
        OMP_NUM_THREADS='1',
        REPO=str(REPO),
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path),
             str(REPO),
             os.environ.get('PYTHONPATH', '')]),
        **extra)


def start(tmp_path, config, work, *args, driver=False, **extra):
    """Start a training subprocess in a process group of its own; its
    output goes to ``work``.log."""
    if driver:
        script = tmp_path / 'driver.py'
        script.write_text(DRIVER)
    else:
        script = REPO / 'tools' / 'train.py'
    log = open(f'{work}.log', 'a')
    return subprocess.Popen([
        sys.executable,
        str(script),
        str(config), '--work-dir',
        str(work), *map(str, args)
    ],
                            cwd=tmp_path,
                            env=env(tmp_path, **extra),
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc, timeout=180) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def train(tmp_path, config, work, *args, expect=0, **extra) -> str:
    """Run training to the end; return its log."""
    code = finish(start(tmp_path, config, work, *args, **extra))
    log = Path(f'{work}.log').read_text()
    assert code == expect, log[-4000:]
    return log


def wait_for(condition, proc, what, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f'training ended before {what}'
        assert time.time() < deadline, f'timed out waiting for {what}'
        time.sleep(0.01)


def sigterm_when(tmp_path, config, work, marker, group=False, **extra) -> str:
    """Train until ``marker`` is in the log, send SIGTERM (to the whole
    process group with ``group``), expect the documented exit code.

    Returns:
        str: The log.
    """
    proc = start(tmp_path, config, work, **extra)
    log = Path(f'{work}.log')
    wait_for(lambda: marker in log.read_text(), proc, marker)
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    code = finish(proc)
    assert code == PREEMPTED, log.read_text()[-3000:]
    return log.read_text()


def weights(path) -> dict:
    return torch.load(path, weights_only=True)['state_dict']


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def pointer(work: Path) -> str:
    return Path((work / 'last_checkpoint').read_text()).name


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """Uninterrupted runs, iteration- and epoch-based."""
    root = tmp_path_factory.mktemp('straight')
    runs = {}
    for by_epoch in (False, True):
        work = root / ('epoch' if by_epoch else 'iter')
        train(root, toy_config(root, by_epoch), work)
        runs[by_epoch] = work
    assert pointer(runs[False]) == 'iter_8.pth'
    # max_keep_ckpts=2: the older ones went after the newer were complete.
    assert sorted(p.name for p in runs[False].glob('*.pth')) == [
        'iter_6.pth', 'iter_8.pth'
    ]
    assert pointer(runs[True]) == 'epoch_3.pth'
    return runs


def test_exit_code_constant():
    from mmdist.engine import PREEMPTED_EXIT_CODE
    assert PREEMPTED_EXIT_CODE == PREEMPTED


# ------------------------------------------------------------------ SIGKILL
def test_sigkill_between_checkpoints(tmp_path, straight):
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    proc = start(tmp_path, config, work, TOY_TRAIN_SLEEP='0.2')
    last = work / 'last_checkpoint'
    wait_for(lambda: last.exists() and 'iter_4' in last.read_text(), proc,
             'iter_4')
    proc.kill()
    proc.wait()
    log = train(tmp_path, config, work, '--resume')
    assert 'resumed epoch: 0, iter: 4' in log
    assert_same_weights(straight[False] / 'iter_8.pth', work / 'iter_8.pth')


def test_sigkill_inside_checkpoint_write(tmp_path, straight):
    """The kill lands while iter_6.pth is half written: iter_6.pth never
    appears, the pointer keeps naming iter_4.pth, and the resumed run
    removes the leftover temporary file."""
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    proc = start(
        tmp_path,
        config,
        work,
        driver=True,
        FAULT='stall',
        FAULT_TARGET='iter_6.pth')

    def temps():
        return [
            p for p in work.glob('.iter_6.pth.*.tmp') if p.stat().st_size > 0
        ]

    wait_for(temps, proc, 'the half-written iter_6.pth')
    proc.kill()
    proc.wait()
    assert not (work / 'iter_6.pth').exists()
    assert pointer(work) == 'iter_4.pth'
    assert len(temps()) == 1

    log = train(tmp_path, config, work, '--resume')
    assert 'the unfinished write of a process that was killed' in log
    assert not list(work.glob('.*.tmp'))
    assert_same_weights(straight[False] / 'iter_8.pth', work / 'iter_8.pth')


def test_sigkill_before_pointer_update(tmp_path, straight):
    """iter_6.pth is complete but last_checkpoint still names iter_4.pth:
    the resumed run takes the newer, complete checkpoint."""
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    proc = start(
        tmp_path,
        config,
        work,
        driver=True,
        FAULT='stall_pointer',
        FAULT_TARGET='iter_6.pth')
    wait_for(lambda: (work / 'iter_6.pth').exists(), proc, 'iter_6.pth')
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert pointer(work) == 'iter_4.pth'
    # The expired checkpoint goes only after the pointer names the new one.
    assert (work / 'iter_2.pth').exists()

    log = train(tmp_path, config, work, '--resume')
    assert 'resuming from' in log and 'resumed epoch: 0, iter: 6' in log
    assert_same_weights(straight[False] / 'iter_8.pth', work / 'iter_8.pth')


def test_sigkill_before_first_checkpoint_starts_over(tmp_path, straight):
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    proc = start(tmp_path, config, work, TOY_TRAIN_SLEEP='0.2')
    wait_for(lambda: 'Iter(train) [1/8]' in Path(f'{work}.log').read_text(),
             proc, 'the first iteration')
    proc.kill()
    proc.wait()
    train(tmp_path, config, work, '--resume')
    assert_same_weights(straight[False] / 'iter_8.pth', work / 'iter_8.pth')


# ------------------------------------------------------ unreadable and full
def test_disk_full_mid_write_keeps_previous_checkpoint(tmp_path):
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    proc = start(
        tmp_path,
        config,
        work,
        driver=True,
        FAULT='enospc',
        FAULT_TARGET='iter_6.pth')
    code = finish(proc)
    log = Path(f'{work}.log').read_text()
    assert code != 0
    assert f'Could not write checkpoint {work / "iter_6.pth"}' in log
    assert 'No space left on device' in log
    assert 'iter_4.pth' in log and 'are unchanged' in log
    assert pointer(work) == 'iter_4.pth'
    assert weights(work / 'iter_4.pth')  # whole and loadable
    assert not (work / 'iter_6.pth').exists()
    assert not list(work.glob('.*.tmp'))


def test_auto_resume_skips_unreadable_checkpoint(tmp_path, straight):
    """last_checkpoint names a truncated file: the run says so and resumes
    from the newest checkpoint that loads."""
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    work.mkdir()
    for name in ('iter_6.pth', 'iter_8.pth'):
        (work / name).write_bytes((straight[False] / name).read_bytes())
    bad = work / 'iter_8.pth'
    bad.write_bytes(bad.read_bytes()[:1000])
    (work / 'last_checkpoint').write_text(str(bad))
    log = train(tmp_path, config, work, '--resume')
    assert f'Resume: skipping {bad}: NotACheckpointError' in log
    assert 'truncated' in log and 'resumed epoch: 0, iter: 6' in log
    assert_same_weights(straight[False] / 'iter_8.pth', work / 'iter_8.pth')


def test_explicit_resume_of_truncated_checkpoint_fails(tmp_path, straight):
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    bad = tmp_path / 'iter_6.pth'
    bad.write_bytes((straight[False] / 'iter_6.pth').read_bytes()[:1000])
    log = train(tmp_path, config, work, '--resume', bad, expect=1)
    assert f'{bad} is not a PyTorch checkpoint' in log
    assert 'truncated' in log and 'resumed epoch' not in log


# ------------------------------------------------------------------ SIGTERM
def test_sigterm_mid_epoch_then_resume(tmp_path, straight):
    """Stopped inside epoch 2: a checkpoint of the iterations done, exit
    143; the resumed run trains the rest of epoch 2 in the interrupted
    order, neither repeating nor skipping a sample."""
    config = toy_config(tmp_path, by_epoch=True)
    work = tmp_path / 'work'
    log = sigterm_when(
        tmp_path, config, work, 'Epoch(train) [2][3/8]', TOY_TRAIN_SLEEP='0.1')
    assert 'SIGTERM received: stopped after training iteration' in log
    partial = pointer(work)
    iters = int(partial[len('iter_'):-len('.pth')])
    assert 8 < iters < 16 and (work / partial).exists()
    assert weights(work / partial)

    log = train(tmp_path, config, work, '--resume')
    assert (f'Resuming inside epoch 2: skipping its first {iters - 8} of 8 '
            'batches') in log
    assert_same_weights(straight[True] / 'epoch_3.pth', work / 'epoch_3.pth')
    # The mid-epoch checkpoint went once epoch 2's was complete.
    assert not (work / partial).exists()


def test_sigterm_iteration_based_then_resume(tmp_path, straight):
    """Between the checkpoints of an iteration-based run: the stop writes
    iter_<n>.pth, which joins the kept checkpoints."""
    config = toy_config(tmp_path, by_epoch=False)
    work = tmp_path / 'work'
    sigterm_when(
        tmp_path, config, work, 'Iter(train) [3/8]', TOY_TRAIN_SLEEP='0.2')
    stopped = pointer(work)
    # The signal lands once iteration 3 is logged: still in that
    # iteration's hooks, or a later iteration when the machine is busy.
    assert stopped in [f'iter_{n}.pth' for n in range(3, 8)], stopped
    log = train(tmp_path, config, work, '--resume')
    assert f'resumed epoch: 0, iter: {stopped[5:-4]}' in log
    assert_same_weights(straight[False] / 'iter_8.pth', work / 'iter_8.pth')


def test_sigterm_to_the_process_group_with_loader_workers(tmp_path, straight):
    """As Slurm does: SIGTERM to every process of the job, DataLoader
    workers included; the workers live until the main process has saved
    (torch's own handler would kill them and fail the step)."""
    config = toy_config(tmp_path, by_epoch=True, workers=2)
    work = tmp_path / 'work'
    sigterm_when(
        tmp_path,
        config,
        work,
        'Epoch(train) [2][3/8]',
        group=True,
        TOY_TRAIN_SLEEP='0.1')
    assert pointer(work).startswith('iter_')
    train(tmp_path, config, work, '--resume')
    assert_same_weights(straight[True] / 'epoch_3.pth', work / 'epoch_3.pth')


def test_sigterm_during_validation_then_resume(tmp_path, straight):
    """Validation is abandoned; the epoch it validated had no checkpoint
    (interval 2), so one is written before the exit."""
    config = toy_config(tmp_path, by_epoch=True, interval=2)
    work = tmp_path / 'work'
    log = sigterm_when(
        tmp_path, config, work, 'Epoch(val) [1][1/8]', TOY_VAL_SLEEP='0.3')
    assert ('stopped during validation (abandoned) after training '
            'iteration 8') in log
    assert 'Epoch(val) [1][8/8]' not in log
    assert pointer(work) == 'epoch_1.pth'

    log = train(tmp_path, config, work, '--resume')
    assert 'resumed epoch: 1, iter: 8' in log
    assert_same_weights(straight[True] / 'epoch_3.pth', work / 'epoch_3.pth')


def test_slurm_script_forwards_sigterm_requeues_and_resumes(tmp_path):
    """tools/slurm_train.sh under sbatch, with stand-ins for srun and
    scontrol: SIGTERM reaches the training command, exit code 143 requeues
    the job, and the restarted job gets --resume."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text(
        textwrap.dedent('''\
        #!/usr/bin/env bash
        echo "srun $*" >> "$CALLS"
        trap 'echo "training got SIGTERM" >> "$CALLS"; exit 143' TERM
        touch "$CALLS.started"
        for _ in $(seq 600); do sleep 0.1; done
        '''))
    (bin_dir / 'scontrol'
     ).write_text('#!/usr/bin/env bash\necho "scontrol $*" >> "$CALLS"\n')
    for tool in ('srun', 'scontrol'):
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / 'calls'
    script_env = dict(
        os.environ,
        PATH=f'{bin_dir}:{os.environ["PATH"]}',
        CALLS=str(calls),
        SLURM_JOB_ID='42',
        SLURM_RESTART_COUNT='1')
    proc = subprocess.Popen([
        'bash',
        str(REPO / 'tools' / 'slurm_train.sh'), 'part', 'job', 'cfg.py', 'work'
    ],
                            env=script_env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True)
    started = Path(f'{calls}.started')
    wait_for(started.exists, proc, 'srun')
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == PREEMPTED, out
    lines = calls.read_text().splitlines()
    assert lines[0].endswith('--launcher=slurm --resume'), lines
    assert lines[1:] == ['training got SIGTERM', 'scontrol requeue 42']


def _children(pid: int) -> list:
    """Process ids whose parent is ``pid``."""
    kids = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / 'stat').read_text()
            except OSError:
                continue
            # The command name may hold spaces; fields follow its ')'.
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_of(pid: int) -> str:
    environ = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
    return next((v[5:].decode() for v in environ if v.startswith(b'RANK=')),
                '')


def start_two_ranks(tmp_path, config, work, *args, **extra):
    import random
    log = open(f'{work}.log', 'a')
    return subprocess.Popen([
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
        '--master_port',
        str(random.randint(20000, 40000)),
        str(REPO / 'tools' / 'train.py'),
        str(config), '--work-dir',
        str(work), '--launcher', 'pytorch', *map(str, args)
    ],
                            cwd=tmp_path,
                            env=env(tmp_path, **extra),
                            stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.mark.heavy
def test_sigterm_to_one_rank_stops_both_at_one_iteration(tmp_path):
    """Only rank 1 gets SIGTERM; the ranks agree (all-reduce MAX) on the
    iteration to stop at, rank 0 writes the checkpoint, both exit 143, and
    the resumed two-rank run ends with the uninterrupted run's weights."""
    config = toy_config(tmp_path, by_epoch=True)
    straight_work = tmp_path / 'straight'
    assert finish(start_two_ranks(tmp_path, config, straight_work)) == 0

    work = tmp_path / 'work'
    proc = start_two_ranks(tmp_path, config, work, TOY_TRAIN_SLEEP='0.1')
    wait_for(
        lambda: 'Epoch(train) [2][2/4]' in Path(f'{work}.log').read_text(),
        proc, 'epoch 2')
    rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == '1']
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGTERM)
    assert finish(proc) != 0  # torchrun reports the workers' exit
    log = Path(f'{work}.log').read_text()
    assert 'a signal on another rank received: stopped after training ' \
        'iteration' in log
    # torchrun's report: both ranks left with the documented code.
    assert log.count('exitcode  : 143') == 2, log[-3000:]
    partial = pointer(work)
    iters = int(partial[len('iter_'):-len('.pth')])
    assert 4 < iters < 8

    assert finish(start_two_ranks(tmp_path, config, work, '--resume')) == 0
    assert_same_weights(straight_work / 'epoch_3.pth', work / 'epoch_3.pth')
