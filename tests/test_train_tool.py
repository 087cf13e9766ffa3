"""tools/train.py says what it adds to a config, and can add nothing.

The demo detector (``configs/demo/det_student.py``, an MMDetection config
without mmdist) trains for 2 iterations on generated data through
MMDetection's own ``tools/train.py`` and through ours with
``--no-fault-tolerance``: the Runners must hold the same hooks (class and
priority, in order) and the same train loop. Without the option, the log
names each hook ours adds. (The config is iteration-based, so no loop is
swapped there; the last test covers the loop on an epoch-based config.)
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mmengine.config import Config

from helpers import CONFIGS, REPO
from mmdist.engine import FAULT_TOLERANCE_KEY, enable_fault_tolerance
from mmdist.testing import make_coco_detection

# Runs train.py scripts one after the other in one process (the imports
# once) as ``__main__``; writes, per run, what its Runner held when train()
# was called (hooks in call order, with priorities), the train loop it built
# and the iterations it trained, as JSON.
RECORDER = textwrap.dedent('''
    import json, runpy, sys, time
    from mmengine.runner import Runner
    from mmengine.runner.priority import get_priority

    out, runs = sys.argv[1], json.loads(sys.argv[2])
    original, records = Runner.train, []

    def train(self):
        hooks = [[f'{type(h).__module__}.{type(h).__qualname__}',
                  get_priority(h.priority)] for h in self.hooks]
        model = original(self)
        loop = type(self.train_loop)
        records.append(dict(hooks=hooks, iter=self.iter,
                            loop=f'{loop.__module__}.{loop.__qualname__}'))
        return model

    Runner.train = train
    for argv in runs:
        # A Runner names its logger by the second it starts: one each.
        time.sleep(1 - time.time() % 1)
        sys.argv = argv
        print('recorder: running', ' '.join(argv), flush=True)
        runpy.run_path(argv[0], run_name='__main__')
    with open(out, 'w') as f:
        json.dump(records, f)
''')


def mmdet_train_script() -> Path:
    """MMDetection's tools/train.py as the installed package ships it."""
    spec = importlib.util.find_spec('mmdet')
    script = Path(spec.origin).parent / '.mim' / 'tools' / 'train.py'
    if not script.is_file():
        pytest.skip(f'{script} is not installed')
    return script


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The demo detector on generated data for 2 iterations, trained by
    MMDetection's tools/train.py, by ours with ``--no-fault-tolerance`` and
    by ours as it is: (records, combined output, work dirs)."""
    tmp = tmp_path_factory.mktemp('train_tool')
    root = tmp / 'coco'
    make_coco_detection(str(root), num_train=4, num_val=2, size=(128, 128))
    ann = str(root / 'annotations' / 'instances_val2017.json')
    options = [
        f'{split}_dataloader.dataset.data_root={root}/'
        for split in ('train', 'val', 'test')
    ]
    options += [
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
        'train_dataloader.batch_size=2', 'train_cfg.max_iters=2',
        'default_hooks.logger.interval=1'
    ]
    config = str(CONFIGS / 'demo' / 'det_student.py')
    ours = str(REPO / 'tools' / 'train.py')
    work = {name: tmp / name for name in ('mmdet', 'off', 'on')}
    argvs = [
        [str(mmdet_train_script()), config, '--work-dir',
         str(work['mmdet'])],
        [ours, config, '--no-fault-tolerance', '--work-dir',
         str(work['off'])],
        [ours, config, '--work-dir',
         str(work['on'])],
    ]
    argvs = [argv + ['--cfg-options'] + options for argv in argvs]
    out = tmp / 'records.json'
    proc = subprocess.run(
        [sys.executable, '-c', RECORDER,
         str(out), json.dumps(argvs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED='1'))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        stock, off, on = json.load(f)
    # Each run's own output: from its 'recorder: running' line on.
    logs = re.split(
        r'^recorder: running .*$', proc.stdout + proc.stderr, flags=re.M)
    return dict(stock=stock, off=off, on=on), logs[1:], work


def test_off_builds_what_mmdet_builds(runs):
    records, logs, _ = runs
    assert records['off'] == records['stock']
    assert records['stock']['iter'] == 2
    assert records['stock']['loop'] == (
        'mmengine.runner.loops.IterBasedTrainLoop')
    assert 'fault tolerance' not in logs[1]


def test_on_logs_each_addition(runs):
    records, logs, work = runs
    hooks = [name.split('.')[-1] for name, _ in records['on']['hooks']]
    added = ('SafeCheckpointHook', 'PreemptionHook', 'DivergenceGuardHook')
    assert set(added) <= set(hooks)
    lines = [
        line for line in logs[2].splitlines() if 'fault tolerance:' in line
    ]
    for name in added:
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert '--no-fault-tolerance' in lines[-1]
    # The same lines are in the run's log file.
    log_file = next(work['on'].glob('*/*.log')).read_text()
    assert all(
        line.split('fault tolerance: ')[1] in log_file for line in lines)


def test_each_change_is_reported_and_the_key_turns_them_off():
    written = dict(
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=2))
    cfg = Config(written)
    changes = enable_fault_tolerance(cfg)
    assert [c.split(':')[0] for c in changes] == [
        'default_hooks.checkpoint', 'custom_hooks', 'custom_hooks', 'train_cfg'
    ]
    for name in ('SafeCheckpointHook', 'PreemptionHook', 'DivergenceGuardHook',
                 'ResumableEpochBasedTrainLoop'):
        assert sum(name in c for c in changes) == 1, name
    assert enable_fault_tolerance(cfg) == []  # nothing more to change

    cfg = Config(dict(written, **{FAULT_TOLERANCE_KEY: False}))
    assert enable_fault_tolerance(cfg) == []
    assert cfg.to_dict() == dict(written, **{FAULT_TOLERANCE_KEY: False})
