"""The build-time probe forward: term shapes checked before any step, the
short form resizing decode heads of different strides, and nothing else
about the models changed by it."""
import copy

import pytest
import torch

from helpers import build, load_offline, seg_batch, train_step
from mmdist.distillers.expand import expand_terms
from mmdist.distillers.shape_probe import PROBE_SIZES, probe_term_shapes

# SegFormer MiT-B2 (logits at 1/4) -> DeepLabV3 R18-d8 (1/8), short form.
SEGFORMER = ('mmseg/segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_'
             'cityscapes-512x1024_dist.py')
EXPLICIT = dict(
    student_module='decode_head.conv_seg',
    teacher_module='decode_head.conv_seg',
    loss=dict(type='mmdist.DISTLoss'))


def segformer_cfg():
    cfg = load_offline(SEGFORMER)
    cfg.model.student.data_preprocessor.size = (64, 128)
    return cfg


@pytest.fixture(scope='module')
def segformer():
    return build(segformer_cfg())


def test_short_form_resizes_decode_heads_of_other_strides(segformer):
    assert 'resize_teacher' not in segformer_cfg().model.distill_terms[0]
    (term, ) = segformer.terms
    assert term.resize_teacher
    notes = []
    expand_terms(
        segformer_cfg().model.distill_terms,
        segformer.student,
        segformer.teacher,
        log=False,
        notes=notes)
    (note, ) = [n for n in notes if 'resize_teacher=True' in n]
    assert 'teacher decode_head.conv_seg gives 16x16 (1/4)' in note
    assert 'student decode_head.conv_seg 8x8 (1/8)' in note
    log_vars = train_step(segformer, seg_batch())
    assert torch.isfinite(log_vars['loss_dist'])


def test_explicit_term_of_other_strides_fails_at_build():
    cfg = segformer_cfg()
    cfg.model.distill_terms = [EXPLICIT]
    with pytest.raises(ValueError) as info:
        build(cfg)
    message = str(info.value)
    assert 'found at build' in message
    assert '(1, 19, 8, 8)' in message and '(1, 19, 16, 16)' in message
    assert 'Set resize_teacher=True' in message
    # The explicit term keeps its own choice: with resize it builds.
    cfg.model.distill_terms = [dict(EXPLICIT, resize_teacher=True)]
    assert build(cfg).terms[0].resize_teacher


def test_class_count_mismatch_named_with_shapes(segformer):
    teacher = copy.deepcopy(segformer.teacher)
    head = teacher.decode_head
    head.conv_seg = torch.nn.Conv2d(head.conv_seg.in_channels, 8, 1)
    terms = [dict(EXPLICIT, resize_teacher=True)]
    with pytest.raises(ValueError, match=r'\(1, 8, 16, 16\)'):
        probe_term_shapes(terms, segformer.student, teacher, [False])


def test_probe_leaves_the_models_and_the_rng_as_they_were(segformer):
    student, teacher = segformer.student, segformer.teacher
    student.train()
    before = copy.deepcopy(student.state_dict())
    rng = torch.get_rng_state()
    hooks = [
        len(m._forward_hooks) for m in (*student.modules(), *teacher.modules())
    ]
    terms = [dict(EXPLICIT, resize_teacher=True)]
    assert probe_term_shapes(terms, student, teacher, [False]) == []
    assert torch.equal(torch.get_rng_state(), rng)
    after = student.state_dict()
    # BatchNorm running statistics and counters included.
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in student.modules())
    assert not [n for n, m in teacher.named_modules() if m.training]
    assert hooks == [
        len(m._forward_hooks) for m in (*student.modules(), *teacher.modules())
    ]


def test_probe_that_cannot_run_is_a_note(segformer, monkeypatch):

    def no_small_input(image):
        raise RuntimeError(f'needs 512x512, got {tuple(image.shape)}')

    monkeypatch.setattr(segformer.student, 'extract_feat', no_small_input)
    terms = [copy.deepcopy(EXPLICIT)]
    (note, ) = probe_term_shapes(terms, segformer.student, segformer.teacher,
                                 [False])
    assert note.startswith('shapes not checked at build')
    assert str(PROBE_SIZES) in note and 'needs 512x512' in note
    assert 'resize_teacher' not in terms[0]


def test_two_stage_box_terms_are_not_probed():
    student = torch.nn.Module()
    terms = [
        dict(
            student_module='roi_head.bbox_head.fc_cls',
            teacher_module='roi_head.bbox_head.fc_cls',
            loss=dict(type='mmdist.DISTLoss'))
    ]
    # No forward runs: the teacher scores the student's own RoIs.
    assert probe_term_shapes(terms, student, student, [True]) == []
