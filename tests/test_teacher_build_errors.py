"""Mistakes in the teacher's settings, told before anything is trained
(issue 27): a ``teacher_ckpt`` that does not fit the teacher names both and
says how they differ (a distillation checkpoint: how to export its
student), and fp16 on a CPU is refused before the teacher is built, saying
what bf16 does there."""
import importlib.util
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

import mmdist.distillers.distiller as distiller_module
from helpers import REPO, build
from mmdist.distillers.fast_form import FP16_ON_CPU

TEACHER = 'mmdist::demo/det_teacher.py'


def demo_config(**model) -> Config:
    """The demo distillation (RetinaNet R18 <- R34, both narrow)."""
    cfg = Config.fromfile(str(REPO / 'configs/demo/det_student_dist.py'))
    cfg.model.teacher_precision = 'float32'
    cfg.model.update(model)
    return cfg


def test_teacher_ckpt_of_another_model_names_config_and_file(tmp_path):
    cfg = demo_config(teacher_ckpt=None)
    distiller = build(cfg)
    path = tmp_path / 'student_only.pth'
    save_checkpoint(distiller.student.state_dict(), str(path))  # the R18
    with pytest.raises(RuntimeError) as error:
        build(demo_config(teacher_ckpt=str(path)))
    message = str(error.value)
    assert message.startswith(f"teacher_ckpt '{path}' does not fit the "
                              f"teacher config '{TEACHER}': "), message
    # Counts and a few examples, not MMEngine's wall of keys.
    assert re.search(
        r'missing keys \(in the teacher, not in the file\): '
        r'\d+, e\.g\. backbone\.layer\d', message), message
    assert re.search(
        r'size mismatch: \d+, e\.g\. backbone\.conv1\.weight: '
        r'\(16, 3, 7, 7\) in the file, \(32, 3, 7, 7\) in the '
        r'teacher', message), message
    assert message.endswith('check that teacher and teacher_ckpt name the '
                            'same model.')
    assert 'do not match exactly' not in message
    assert len(message) < 1500


def test_distillation_checkpoint_as_teacher_says_how_to_export(tmp_path):
    """A distiller's checkpoint (student.* keys) given as teacher_ckpt: the
    error says to export its student; doing what it says builds."""
    distiller = build(demo_config(teacher_ckpt=None))
    path = tmp_path / 'iter_300.pth'
    save_checkpoint(distiller.state_dict(), str(path))
    with pytest.raises(RuntimeError) as error:
        build(demo_config(teacher_ckpt=str(path)))
    message = str(error.value)
    advice = re.search(
        rf"{re.escape(str(path))} is a distillation checkpoint \(its weights "
        r"are the student's, student\.\*\), not a teacher's: to distil from "
        r'that student, write it as a plain checkpoint with `python '
        r'(tools/model_converters/export_student\.py) (\S+) STUDENT\.pth`, '
        r"set teacher_ckpt='STUDENT\.pth' and teacher to that student's "
        r'config\.$', message)
    assert advice, message
    spec = importlib.util.spec_from_file_location('export_student',
                                                  REPO / advice.group(1))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    exported = tmp_path / 'STUDENT.pth'
    tool.export_student(advice.group(2), str(exported))
    student_cfg = Config.fromfile(str(REPO / 'configs/demo/det_student.py'))
    rebuilt = build(
        demo_config(teacher=student_cfg.model, teacher_ckpt=str(exported)))
    for name, value in distiller.student.state_dict().items():
        assert torch.equal(rebuilt.teacher.state_dict()[name], value), name


def test_fp16_on_a_cpu_is_refused_before_the_teacher_is_built(monkeypatch):
    """The refusal comes first (no teacher built, its checkpoint never
    read) and says what bf16 does on a CPU without bf16 units."""
    built = []
    monkeypatch.setattr(distiller_module, 'build_frozen_teacher',
                        lambda *args, **kwargs: built.append(args))
    monkeypatch.setattr(
        distiller_module, 'get_device', lambda: 'cpu', raising=False)
    cfg = demo_config(
        teacher_precision='fp16', teacher_ckpt='/nonexistent/teacher.pth')
    with pytest.raises(ValueError) as error:
        build(cfg)
    assert str(error.value) == FP16_ON_CPU
    assert built == []
    assert ('on a CPU without them the teacher runs in float32 (one log '
            'line says so) unless MMDIST_BF16=1 forces bf16') in FP16_ON_CPU
