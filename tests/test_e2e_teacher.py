"""End to end: a teacher trained with tools/train.py, then distilled from.

The distiller's teacher, evaluated by ``tools/test.py CONFIG --teacher``
(fed the student's batch, renormalised for it), must score exactly what the
teacher's own ``tools/test.py`` gives, although the two configs normalise
differently. The student is then evaluated without the teacher checkpoint,
and the logged DIST parts add up to the logged loss.
"""
import json
import re

import pytest
from mmengine.config import Config

from helpers import run_tool
from test_e2e_classification import tiny_classification_config

TEACHER_NORMALISATION = dict(
    num_classes=5,
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=False)


def top1(output: str) -> float:
    found = re.findall(r'accuracy/top1: ([0-9.]+)', output)
    assert found, output[-3000:]
    return float(found[-1])


def scalars(work_dir) -> list:
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert logs, f'no scalars.json under {work_dir}'
    return [json.loads(line) for line in logs[-1].read_text().splitlines()]


@pytest.mark.heavy
def test_distiller_teacher_scores_like_the_teacher_alone(tmp_path):
    dist_path = tiny_classification_config(tmp_path)
    dist_cfg = Config.fromfile(str(dist_path))

    # The teacher's own config: same data, its own normalisation.
    teacher_cfg = Config.fromfile(str(dist_path))
    teacher_cfg.model = dist_cfg.model.teacher
    teacher_cfg.model.pop('data_preprocessor', None)
    teacher_cfg.data_preprocessor = TEACHER_NORMALISATION
    teacher_cfg.train_cfg.max_epochs = 3
    teacher_cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=3)
    teacher_path = tmp_path / 'teacher_config.py'
    teacher_cfg.dump(str(teacher_path))
    run_tool('train.py', teacher_path, '--work-dir', tmp_path / 'teacher')
    teacher_ckpt = tmp_path / 'teacher' / 'epoch_3.pth'
    alone = top1(
        run_tool('test.py', teacher_path, teacher_ckpt, '--work-dir',
                 tmp_path / 'test_teacher').stdout)

    dist_cfg.model.teacher = str(teacher_path)
    dist_cfg.model.teacher_ckpt = str(teacher_ckpt)
    dist_cfg.train_cfg.max_epochs = 3
    dist_cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=3)
    dist_cfg.default_hooks.logger.interval = 1
    dist_cfg.model.teacher_check_iters = 10  # of the run's 15 iterations
    dist_path = tmp_path / 'dist_config.py'
    dist_cfg.dump(str(dist_path))
    tested = run_tool('test.py', dist_path, '--teacher', '--work-dir',
                      tmp_path / 'test_dist_teacher')
    out = tested.stdout + tested.stderr
    assert 'teacher input: teacher input = M @ student input' in out
    assert top1(out) == alone

    # Train the student; the teacher reports its accuracy on the way.
    trained = run_tool('train.py', dist_path, '--work-dir', tmp_path / 'dist')
    assert 'teacher accuracy on the first' in trained.stdout + trained.stderr
    logged = [s for s in scalars(tmp_path / 'dist') if 'loss_dist' in s]
    assert len(logged) >= 6
    for step in logged:
        # Smoothed alike, the parts add up to the logged loss (4 digits).
        assert abs(step['loss_dist.inter'] + step['loss_dist.intra'] -
                   step['loss_dist']) < 2e-4, step
    assert any('teacher_acc' in s for s in logged)

    # The student is evaluated without the teacher: its checkpoint may go.
    teacher_ckpt.unlink()
    student = run_tool('test.py', dist_path, tmp_path / 'dist' / 'epoch_3.pth',
                       '--work-dir', tmp_path / 'test_student')
    assert 0 <= top1(student.stdout) <= 100
