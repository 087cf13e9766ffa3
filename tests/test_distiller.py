"""Distiller pieces that every task shares."""
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor

from helpers import build, det_batch, load_offline, train_step
from mmdist.distillers import InputRenormaliser

PYTORCH_STYLE = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_size_divisor=32)
CAFFE_STYLE = dict(
    mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False,
    pad_size_divisor=32)


def test_teacher_gets_its_own_normalisation():
    student = DetDataPreprocessor(**PYTORCH_STYLE)
    teacher = DetDataPreprocessor(**CAFFE_STYLE)
    batch = det_batch(size=(60, 90), batch=2)
    student_in = student(batch, False)
    teacher_in = teacher(batch, False)
    renorm = InputRenormaliser(student, teacher)
    assert renorm.needed
    mapped = renorm(student_in['inputs'], student_in['data_samples'])
    assert torch.allclose(mapped, teacher_in['inputs'], atol=1e-3)


def test_same_normalisation_passes_the_batch_through():
    student = DetDataPreprocessor(**PYTORCH_STYLE)
    renorm = InputRenormaliser(student, DetDataPreprocessor(**PYTORCH_STYLE))
    inputs = torch.randn(1, 3, 32, 32)
    assert not renorm.needed and renorm(inputs) is inputs


def test_caffe_teacher_in_a_real_step():
    cfg = load_offline('mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py')
    cfg.model.teacher = 'mmdet::retinanet/retinanet_r50-caffe_fpn_1x_coco.py'
    model = build(cfg)
    assert model.renormalise.needed
    assert torch.isfinite(train_step(model, det_batch())['loss_dist'])


def test_teacher_from_a_relative_config_path(monkeypatch, tmp_path):
    (tmp_path / 'teacher.py').write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_offline('mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py')
    cfg.model.teacher = 'teacher.py'
    model = build(cfg)
    assert model.teacher.backbone.depth == 18
    assert torch.isfinite(train_step(model, det_batch())['loss_dist'])


def test_teacher_from_an_mmdist_config_path():
    cfg = load_offline(
        'mmpretrain/resnet50_to_resnet18_8xb16_cifar100_dist.py')
    cfg.model.teacher = 'mmdist::mmpretrain/resnet18_8xb16_cifar100.py'
    model = build(cfg)
    assert model.teacher.backbone.depth == 18


def test_hooks_keep_nothing_between_steps():
    cfg = load_offline('mmdet/atss_r101_to_r50_fpn_1x_coco_dist.py')
    model = build(cfg)
    train_step(model, det_batch())
    assert all(not r.records and not r.active for r in model.recorders)
    # Also when a step fails half-way.
    model.terms[0].loss.forward = lambda *a, **k: 1 / 0
    try:
        train_step(model, det_batch())
    except ZeroDivisionError:
        pass
    assert all(not r.records and not r.active for r in model.recorders)


def test_teacher_autocast_keeps_the_loss_in_float32():
    cfg = load_offline('mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py')
    cfg.model.teacher_autocast = 'bf16'  # CPU autocast; fp16 on GPUs
    model = build(cfg)
    seen = []
    model.teacher.head.fc.register_forward_hook(
        lambda m, i, out: seen.append(out.dtype))
    from helpers import cls_batch
    log_vars = train_step(model, cls_batch(1000))
    assert seen == [torch.bfloat16]
    assert log_vars['loss_dist'].dtype == torch.float32
    assert torch.isfinite(log_vars['loss_dist'])
