"""Short terms, container paths and refusals, at build time (and the
errors of a first step that records nothing)."""

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

from helpers import det_batch, run_tool, seg_batch, train_step
from mmdist.testing import strip_pretrained
from mmdist.utils import model_config

RTMDET = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
RETINA = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
FCOS = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'
ATSS = 'mmdet::atss/atss_r50_fpn_1x_coco.py'
FASTER = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
CASCADE = 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py'
DINO = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
OCRNET = 'mmseg::ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py'
DIST = dict(type='mmdist.DISTLoss')


def _model(config: str) -> dict:
    path, _ = Config._get_cfg_path(config, '')
    cfg = Config.fromfile(path)
    strip_pretrained(cfg.model)
    model = model_config(cfg)
    model['_scope_'] = cfg.default_scope
    if model.data_preprocessor.get('size') is not None:
        # MMSeg pads to its crop size: pad seg_batch()'s images to theirs.
        model.data_preprocessor['size'] = (64, 128)
    return model


def _distiller(student: str, teacher: str, terms):
    student_cfg = _model(student)
    scope = student_cfg.pop('_scope_')
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(
            dict(
                type='mmdist.Distiller',
                student=student_cfg,
                teacher=_model(teacher),
                distill_terms=terms,
                teacher_check_iters=0))


def _pairs(distiller):
    return [(t.student_module, t.teacher_module, t.name)
            for t in distiller.terms]


def test_container_path_becomes_one_term_per_level():
    model = _distiller(RTMDET, RTMDET, [
        dict(
            student_module='bbox_head.rtm_cls',
            teacher_module='bbox_head.rtm_cls',
            loss=dict(type='mmdist.DISTLoss', activation='sigmoid'))
    ])
    assert _pairs(model) == [(f'bbox_head.rtm_cls.{i}',
                              f'bbox_head.rtm_cls.{i}', f'dist_l{i}')
                             for i in range(3)]


def test_container_against_a_single_module_names_the_elements():
    with pytest.raises(ValueError) as error:
        _distiller(RTMDET, RETINA, [
            dict(
                student_module='bbox_head.rtm_cls',
                teacher_module='bbox_head.retina_cls',
                loss=DIST)
        ])
    message = str(error.value)
    assert ('bbox_head.rtm_cls.0, bbox_head.rtm_cls.1, bbox_head.rtm_cls.2'
            in message)
    assert 'indexes, never calls' in message


def test_short_form_fills_activation_and_row_layout():
    model = _distiller(RETINA, RETINA, [dict(head='bbox_head', loss=DIST)])
    (term, ) = model.terms
    assert term.student_module == 'bbox_head.retina_cls'
    assert term.loss.activation == 'sigmoid'
    assert term.loss.num_classes == 80  # a row per (image, anchor, position)
    model = _distiller(RETINA, RETINA, [
        dict(
            head='bbox_head',
            loss=dict(type='mmdist.DISTLoss', num_classes=None))
    ])
    assert model.terms[0].loss.num_classes is None  # the user's key wins


def test_different_families_pair_where_rows_correspond():
    model = _distiller(FCOS, ATSS, None)
    assert _pairs(model) == [('bbox_head.conv_cls', 'bbox_head.atss_cls',
                              'dist')]


def test_different_families_whose_rows_differ_are_refused():
    with pytest.raises(ValueError, match='different anchors per position'):
        _distiller(FCOS, RETINA, [dict(head='bbox_head', loss=DIST)])


def test_cascade_teacher_scores_the_student_rois_with_its_first_stage():
    model = _distiller(FASTER, CASCADE, [dict(head='roi_head', loss=DIST)])
    assert _pairs(model) == [('roi_head.bbox_head.fc_cls',
                              'roi_head.bbox_head.0.fc_cls', 'dist')]
    assert model.terms[0].loss.activation == 'softmax'
    losses = train_step(model, det_batch())
    assert torch.isfinite(losses['loss_dist'])


def test_explicit_term_inside_a_query_head_is_refused():
    with pytest.raises(ValueError) as error:
        _distiller(DINO, DINO, [
            dict(
                student_module='bbox_head.cls_branches.0',
                teacher_module='bbox_head.cls_branches.0',
                loss=DIST)
        ])
    message = str(error.value)
    assert 'student bbox_head is a DINOHead (DETR family)' in message
    assert 'do not correspond' in message
    assert 'feature mimicking on the neck' in message


def test_a_module_that_records_nothing_names_the_likely_causes():
    model = _distiller(RETINA, RETINA, [
        dict(
            student_module='bbox_head.loss_cls',
            teacher_module='bbox_head.loss_cls',
            loss=DIST)
    ])
    with pytest.raises(RuntimeError) as error:
        train_step(model, det_batch())
    message = str(error.value)
    assert 'teacher bbox_head.loss_cls recorded nothing' in message
    assert 'indexes rather than calls' in message
    assert 'forward() directly' in message


def test_a_cascade_stage_called_twice_is_taken_once():
    """CascadeEncoderDecoder calls decode_head.0 for its loss and again to
    feed the OCR stage: explicit, the step says so; short, max_calls=1."""
    model = _distiller(OCRNET, OCRNET, [
        dict(
            student_module='decode_head.0.conv_seg',
            teacher_module='decode_head.0.conv_seg',
            loss=DIST)
    ])
    with pytest.raises(RuntimeError, match='set max_calls on the term'):
        train_step(model, seg_batch())
    model = _distiller(OCRNET, OCRNET, [dict(head='decode_head', loss=DIST)])
    assert [(t.student_module, t.max_calls)
            for t in model.terms] == [('decode_head.0.conv_seg', 1),
                                      ('decode_head.1.conv_seg', None)]
    losses = train_step(model, seg_batch())
    assert torch.isfinite(losses['loss_dist_s0'])
    assert torch.isfinite(losses['loss_dist_s1'])


def test_print_terms_prints_pasteable_terms():
    out = run_tool('misc/print_terms.py', RTMDET).stdout
    assert "dict(student_module='bbox_head.rtm_cls.2'" in out
    assert 'num_classes=80' in out and "activation='sigmoid'" in out
    namespace = {}
    exec(out[out.index('distill_terms=['):], namespace)  # noqa: S102
    assert len(namespace['distill_terms']) == 3
    assert namespace['distill_terms'][0]['name'] == 'dist_l0'
