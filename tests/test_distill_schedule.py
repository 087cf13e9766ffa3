"""Distillation schedules: the multiplier curve, a stop that stops the
teacher, resume, and bad settings caught before training."""
import json

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from helpers import run_tool
from mmdist.engine import DistillWeightHook
from test_e2e_classification import tiny_classification_config


@pytest.mark.parametrize('kwargs,expected', [
    (dict(), {
        0: 1.0,
        7: 1.0,
        1000: 1.0
    }),
    (dict(weight=0.5, stop=10), {
        0: 0.5,
        9: 0.5,
        10: 0.0,
        11: 0.0
    }),
    (dict(schedule='linear', end=4), {
        0: 0.0,
        1: 0.25,
        2: 0.5,
        4: 1.0,
        9: 1.0
    }),
    (dict(schedule='linear', begin=2, end=6, start_weight=0.2, weight=1.0), {
        0: 0.2,
        2: 0.2,
        4: 0.6,
        6: 1.0
    }),
    (dict(schedule='cosine', end=4, min_weight=0.0), {
        0: 1.0,
        2: 0.5,
        4: 0.0,
        5: 0.0
    }),
    (dict(schedule='step', milestones=[3, 6], gamma=0.5), {
        0: 1.0,
        3: 0.5,
        5: 0.5,
        6: 0.25
    }),
    (dict(schedule='linear', end=4, stop=6), {
        2: 0.5,
        5: 1.0,
        6: 0.0
    }),
])
def test_multiplier_curve(kwargs, expected):
    hook = DistillWeightHook(**kwargs)
    for progress, value in expected.items():
        assert hook.multiplier(progress) == pytest.approx(value), progress


@pytest.mark.parametrize('kwargs,key', [
    (dict(weight=-1.0), 'weight'),
    (dict(schedule='linear', end=10,
          start_weight=float('nan')), 'start_weight'),
    (dict(schedule='exponential'), 'schedule'),
    (dict(schedule='linear'), 'end'),
    (dict(schedule='cosine', begin=5, end=5), 'end'),
    (dict(schedule='step'), 'milestones'),
    (dict(schedule='step', milestones=[5, 2]), 'milestones'),
    (dict(schedule='linear', begin=10, end=20, stop=5), 'stop'),
    (dict(stop=-1), 'stop'),
])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        DistillWeightHook(**kwargs)


def test_bad_settings_fail_before_training(tmp_path):
    cfg = Config.fromfile(str(tiny_classification_config(tmp_path)))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.custom_hooks = [
        dict(
            type='mmdist.DistillWeightHook', schedule='linear', end=4, stop=0)
    ]
    with pytest.raises(ValueError, match='stop'):
        Runner.from_cfg(cfg)


def scalars(work_dir) -> list:
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    return [
        json.loads(line) for line in logs[-1].read_text().splitlines()
        if 'loss' in line
    ]


@pytest.mark.heavy
def test_stop_stops_the_teacher_and_the_log_says_so(tmp_path):
    cfg = Config.fromfile(str(tiny_classification_config(tmp_path)))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_cfg.max_epochs = 2  # 10 iterations
    cfg.custom_hooks = [dict(type='mmdist.DistillWeightHook', stop=4)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10)
    runner = Runner.from_cfg(cfg)
    calls = []
    runner.model.teacher.backbone.register_forward_hook(
        lambda *a: calls.append(runner.iter))
    runner.train()
    assert calls == [0, 1, 2, 3]  # never after the stop
    logged = scalars(tmp_path / 'work')
    assert [s['step'] for s in logged] == list(range(1, 11))
    for line in logged:
        stopped = line['step'] > 4
        assert line['distill_weight'] == (0.0 if stopped else 1.0)
        if stopped:  # not a stale mean of earlier values
            assert line['loss_dist'] == 0.0
        else:
            assert line['loss_dist'] > 0


@pytest.mark.heavy
def test_resume_continues_the_curve(tmp_path):
    base = Config.fromfile(str(tiny_classification_config(tmp_path)))
    base.train_cfg.max_epochs = 2  # 5 iterations per epoch
    base.custom_hooks = [
        dict(type='mmdist.DistillWeightHook', schedule='linear', end=8)
    ]
    base.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    path = tmp_path / 'warmup.py'
    base.dump(str(path))
    run_tool('train.py', path, '--work-dir', tmp_path / 'straight')
    run_tool('train.py', path, '--work-dir', tmp_path / 'split',
             '--cfg-options', 'train_cfg.max_epochs=1')
    run_tool('train.py', path, '--work-dir', tmp_path / 'split', '--resume')
    straight = [s['distill_weight'] for s in scalars(tmp_path / 'straight')]
    second = [s['distill_weight'] for s in scalars(tmp_path / 'split')]
    assert straight == pytest.approx([i / 8 for i in range(8)] + [1.0, 1.0])
    assert second == pytest.approx(straight[5:])
