"""Detection distillation: shipped COCO configs, RoI pairing, frozen teacher,
bad input."""
import copy

import pytest
import torch

from helpers import build, det_batch, load_offline, shipped_configs, train_step

DET_CONFIGS = shipped_configs('mmdet')
RETINA = 'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'
FASTER = ('mmdet/cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_'
          'coco_dist.py')


def test_all_pairs_shipped():
    assert len(DET_CONFIGS) >= 6
    for path in DET_CONFIGS:
        if path.endswith('_dist.py'):
            assert path.replace('_dist.py', '_kd.py') in DET_CONFIGS


# The VOC pair is also stepped on VOC-layout data (test_class_map.py); the
# DINO pair (256x256 inputs for its top-900 queries) in test_detr_queries.py.
@pytest.mark.parametrize('path', [
    pytest.param(p, marks=pytest.mark.heavy) if 'voc0712' in p else p
    for p in DET_CONFIGS if not p.startswith('mmdet/dino-')
])
def test_config_takes_a_training_step(path):
    cfg = load_offline(path)
    model = build(cfg)
    log_vars = train_step(model, det_batch(_student_classes(cfg)))
    kind = 'dist' if path.endswith('_dist.py') else 'kd'
    loss = log_vars[f'loss_{kind}']
    assert torch.isfinite(loss) and float(loss) > 0
    if kind == 'dist':
        parts = log_vars['loss_dist.inter'] + log_vars['loss_dist.intra']
        assert float(parts) == pytest.approx(float(loss), rel=1e-5)
    # The task losses are still there, next to the distillation loss.
    assert any(k.startswith('loss_cls') for k in log_vars)


def _student_classes(cfg) -> int:
    student = cfg.model.student
    head = student.get('bbox_head') or student.roi_head.bbox_head
    return head.num_classes


def test_two_stage_teacher_scores_exactly_the_student_rois():
    model = build(load_offline(FASTER))
    student_rois, teacher_rois, rpn_calls = [], [], []
    model.student.roi_head.bbox_roi_extractor.register_forward_pre_hook(
        lambda m, args: student_rois.append(args[1].clone()))
    model.teacher.roi_head.bbox_roi_extractor[0].register_forward_pre_hook(
        lambda m, args: teacher_rois.append(args[1].clone()))
    for stage in (1, 2):
        model.teacher.roi_head.bbox_roi_extractor[
            stage].register_forward_pre_hook(
                lambda m, args: teacher_rois.append('later stage ran'))
    model.teacher.rpn_head.register_forward_hook(
        lambda *args: rpn_calls.append(1))
    model.teacher.roi_head.mask_head[0].register_forward_hook(
        lambda *args: rpn_calls.append('mask'))
    logits = []
    model.teacher.roi_head.bbox_head[0].fc_cls.register_forward_hook(
        lambda m, i, out: logits.append(out.shape))

    log_vars = train_step(model, det_batch())
    assert len(student_rois) == 1 and len(teacher_rois) == 1
    assert torch.equal(student_rois[0], teacher_rois[0])
    # 512 sampled RoIs per image (ground truth added as proposals).
    assert student_rois[0].shape == (1024, 5)
    assert logits == [torch.Size([1024, 81])]
    assert rpn_calls == []
    assert torch.isfinite(log_vars['loss_dist'])


def test_teacher_frozen_in_eval_and_out_of_checkpoints():
    model = build(load_offline(RETINA))
    teacher = model.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model.train()
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in ids for p in teacher.parameters())
    assert not any(k.startswith('teacher') for k in model.state_dict())
    assert any(k.startswith('student.') for k in model.state_dict())
    for _ in range(2):
        train_step(model, det_batch(), lr=0.1)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_predict_runs_the_student_only():
    model = build(load_offline(RETINA))
    calls = []
    model.teacher.register_forward_hook(lambda *a: calls.append(1))
    model.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    model.eval()
    data = model.data_preprocessor(det_batch(batch=1), False)
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 1 and hasattr(results[0], 'pred_instances')
    assert calls == []


def test_dense_per_anchor_layout_builds_and_differs():
    cfg = load_offline(RETINA)
    cfg.model.distill_terms[0].loss.num_classes = 80
    model = build(cfg)
    log_vars = train_step(model, det_batch())
    assert torch.isfinite(log_vars['loss_dist'])


# -------------------------------------------------------------- bad input
def test_wrong_module_path_lists_close_paths():
    cfg = load_offline(RETINA)
    cfg.model.distill_terms = [
        dict(
            student_module='bbox_head.retina_clss',
            teacher_module='bbox_head.retina_cls',
            loss=dict(type='mmdist.DISTLoss', activation='sigmoid'))
    ]
    with pytest.raises(KeyError, match='bbox_head.retina_cls'):
        build(cfg)


def test_class_count_mismatch_names_both_modules_and_shapes():
    cfg = load_offline(RETINA)
    teacher = copy.deepcopy(cfg.model.student)
    teacher.backbone.depth = 18
    teacher.neck.in_channels = [64, 128, 256, 512]
    teacher.bbox_head.num_classes = 10
    cfg.model.teacher = teacher
    # The short form refuses the pair at build, naming the class counts:
    # the teacher (a model dict, no checkpoint) names no classes to map.
    with pytest.raises(ValueError, match='predict 80 and 10 classes'):
        build(cfg)
    # So does an explicit term on the class logits, naming the modules.
    cfg.model.distill_terms = [
        dict(
            student_module='bbox_head.retina_cls',
            teacher_module='bbox_head.retina_cls',
            loss=dict(type='mmdist.DISTLoss', activation='sigmoid'))
    ]
    with pytest.raises(ValueError) as info:
        build(cfg)
    message = str(info.value)
    assert 'bbox_head.retina_cls' in message
    assert 'predict 80 and 10 classes' in message and 'class_map' in message


def test_missing_teacher_checkpoint_fails_at_build(tmp_path):
    cfg = load_offline(RETINA)
    cfg.model.teacher_ckpt = str(tmp_path / 'no_such_teacher.pth')
    with pytest.raises(FileNotFoundError, match='no_such_teacher.pth'):
        build(cfg)


def test_unknown_teacher_config_fails_at_build():
    cfg = load_offline(RETINA)
    cfg.model.teacher = 'mmdet::retinanet/no_such_config.py'
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        build(cfg)
    cfg.model.teacher = 'configs/nowhere/teacher.py'
    with pytest.raises(FileNotFoundError, match='nowhere/teacher.py'):
        build(cfg)
