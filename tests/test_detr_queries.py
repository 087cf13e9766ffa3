"""Shared distillation queries on the DETR family
(:mod:`mmdist.distillers.queries`).

- Correspondence: a student equal to its teacher gives equal logits on the
  shared queries (every family in eval mode; DINO in training mode too,
  with its denoising queries), a DIST term and gradient of 0; a different
  student gets a positive term whose gradient reaches its decoder, encoder
  and backbone.
- Isolation: with the term active, the student's own losses and
  predictions are the stock model's, and both models decoded the group.

Zoo configs with 100 queries (DINO, Deformable DETR) so that the 128x128
test images have enough encoder tokens for the two-stage top-k, and runs
stay short on 2 CPU cores.
"""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import mmdist  # noqa: F401
from helpers import det_batch
from mmdist.distillers.queries import (QueryDistillTerm, class_logits, decode,
                                       detector_kind, encode)
from mmdist.losses import DISTLoss
from mmdist.testing import strip_pretrained
from mmdist.utils import model_config

CONFIGS = {
    'DETR': 'detr/detr_r18_8xb2-500e_coco.py',
    'Deformable DETR': 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'Conditional DETR':
    'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
    'DAB-DETR': 'dab_detr/dab-detr_r50_8xb2-50e_coco.py',
    'DINO': 'dino/dino-4scale_r50_8xb2-12e_coco.py',
}


def _model_cfg(family: str) -> dict:
    path, _ = Config._get_cfg_path('mmdet::' + CONFIGS[family], '')
    cfg = Config.fromfile(path)
    strip_pretrained(cfg.model)
    model = model_config(cfg)
    if family in ('DINO', 'Deformable DETR'):
        model['num_queries'] = 100
    return model


def _distiller(family: str,
               same: bool,
               queries=None,
               teacher_cfg=None,
               student_cfg=None):
    """A distiller whose teacher is the student's config (unless
    ``teacher_cfg``); ``same``: with the student's weights."""
    student = student_cfg or _model_cfg(family)
    teacher = copy.deepcopy(teacher_cfg or student)
    teacher['_scope_'] = 'mmdet'
    term = dict(head='bbox_head', loss=dict(type='mmdist.DISTLoss'))
    if queries is not None:
        term['queries'] = queries
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        distiller = MODELS.build(
            dict(
                type='mmdist.Distiller',
                student=student,
                teacher=teacher,
                distill_terms=[term],
                teacher_check_iters=0))
    distiller.student.init_weights()
    if same:
        distiller.teacher.load_state_dict(distiller.student.state_dict())
    return distiller


def _data(distiller, training: bool = True):
    batch = det_batch(size=(128, 128))
    return distiller.data_preprocessor(copy.deepcopy(batch), training)


def _spy(term):
    """Keep the levels the term's loss sees in this step."""
    seen = {}
    losses = term.losses

    def spy(students, teachers, *args, **kwargs):
        seen['students'], seen['teachers'] = students, teachers
        return losses(students, teachers, *args, **kwargs)

    term.losses = spy
    return seen


def _student_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {
        name: g
        for (name, p), g in zip(((n, p) for n, p in model.named_parameters()
                                 if p.requires_grad), grads) if g is not None
    }


@pytest.mark.parametrize('family', list(CONFIGS))
def test_equal_models_give_equal_logits_in_eval(family):
    """In float64, so that the gradient bound measures the construction,
    not float32 rounding (which DIST's normalisation amplifies on rows of
    near-uniform probabilities)."""
    distiller = _distiller(family, same=True).double()
    term = distiller.terms[0]
    assert isinstance(term, QueryDistillTerm)
    group = term.group
    distiller.eval()
    data = _data(distiller, training=False)
    inputs, samples = data['inputs'].double(), data['data_samples']
    student, teacher = distiller.student, distiller.teacher
    with torch.no_grad():
        group.teacher_records.start()
        group.teacher_step(teacher, teacher.extract_feat(inputs), samples)
        teachers = list(group.teacher_records.records)
        group.teacher_records.stop()
    # 100 of the teacher's boxes (or queries) and 100 random ones per image.
    assert group.points.shape[:2] == (2, 200)
    image, _ = encode(student, student.extract_feat(inputs), samples)
    students = decode(student, detector_kind(student), image, group.points,
                      group.student_layers)
    assert len(students) == len(teachers) == 1
    assert students[0].shape == teachers[0].shape
    assert students[0].shape[0] == 2 * 200
    assert students[0].dtype == torch.float64
    assert (students[0] - teachers[0]).abs().max() <= 1e-5
    loss = term.loss(students[0], teachers[0])
    assert loss.abs() <= 1e-6
    grads = _student_grads(student, loss)
    assert grads and max(g.abs().max() for g in grads.values()) <= 1e-6


def test_dino_training_step_equal_models():
    """DINO in training mode (dropout 0 in its zoo config), its denoising
    queries present, through the distiller's own step (float32): both
    decode the shared group alike."""
    distiller = _distiller('DINO', same=True)
    term = distiller.terms[0]
    seen = _spy(term)
    distiller.train()
    data = _data(distiller)
    losses = distiller(**data, mode='loss')
    # The stock step had its denoising queries (their losses are there).
    assert 'dn_loss_cls' in losses
    assert term.group.decoded == dict(student=1, teacher=1)
    students, teachers = seen['students'], seen['teachers']
    assert (students[0] - teachers[0]).abs().max() <= 1e-5
    assert losses['loss_dist'].abs() <= 1e-6
    # On the distilled logits; the parameters' bound is checked in float64
    # above (float32 rounding of two equal models differs by ~1e-6).
    grad, = torch.autograd.grad(losses['loss_dist'], students[0])
    assert grad.abs().max() <= 1e-6


@pytest.fixture(scope='module')
def dino_pair():
    """A DINO student and a DINO teacher with other weights, distilling
    every decoder layer (built once: the slowest part on 2 CPU cores)."""
    return _distiller('DINO', same=False, queries=dict(layers='all'))


def _learns_through_the_group(distiller):
    group = distiller.terms[0].group
    before = dict(group.decoded)
    distiller.train()
    losses = distiller(**_data(distiller), mode='loss')
    assert group.decoded == dict(
        student=before['student'] + 1, teacher=before['teacher'] + 1)
    loss = losses['loss_dist']
    assert torch.isfinite(loss) and loss > 0
    grads = _student_grads(distiller.student, loss)
    for part in ('decoder.', 'encoder.', 'backbone.', 'bbox_head.'):
        assert any(
            name.startswith(part) and g.abs().sum() > 0
            for name, g in grads.items()), f'no gradient on {part}'
    layers = distiller.student.decoder.num_layers
    assert len(group.student_layers) == layers


def test_different_student_learns_through_the_group(dino_pair):
    _learns_through_the_group(dino_pair)


@pytest.mark.heavy
def test_different_dab_detr_student_learns_through_the_group():
    _learns_through_the_group(
        _distiller('DAB-DETR', same=False, queries=dict(layers='all')))


def test_isolation_dino(dino_pair):
    """The student's own losses and predictions are the stock model's; both
    models decoded the group in that step, and the teacher ran no detection
    query (its head's forward, loss and predict never ran)."""
    distiller = dino_pair
    group = distiller.terms[0].group
    with DefaultScope.overwrite_default_scope('mmdet'):
        stock = MODELS.build(_model_cfg('DINO'))
    stock.load_state_dict(distiller.student.state_dict())
    calls = []
    head = distiller.teacher.bbox_head
    for name in ('forward', 'loss', 'predict'):
        original = getattr(head, name)

        def wrapped(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(head, name, wrapped)
    distiller.train()
    stock.train()
    data = _data(distiller)
    before = dict(group.decoded)
    torch.manual_seed(1)
    losses = distiller(**data, mode='loss')
    torch.manual_seed(1)
    expected = stock.loss(data['inputs'], data['data_samples'])
    assert group.decoded == dict(
        student=before['student'] + 1, teacher=before['teacher'] + 1)
    assert calls == []
    for name in ('forward', 'loss', 'predict'):
        del head.__dict__[name]
    assert losses['loss_dist'] > 0
    _assert_stock_losses(losses, expected)
    distiller.eval()
    stock.eval()
    data = _data(distiller, training=False)
    with torch.no_grad():
        got = distiller(**copy.deepcopy(data), mode='predict')
        want = stock(**copy.deepcopy(data), mode='predict')
    for a, b in zip(got, want):
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(
                a.pred_instances[key].float(),
                b.pred_instances[key].float(),
                rtol=1e-5,
                atol=1e-5)


def _assert_stock_losses(losses: dict, expected: dict) -> None:
    """The distiller's losses less its own are the stock model's."""
    own = {k: v for k, v in losses.items() if not k.startswith('loss_dist')}
    assert set(own) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(
            own[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_dino_with_dropout_keeps_its_own_step():
    """A DINO decoder with active dropout: the group's decode (dropout too)
    runs under a forked RNG, so the student's losses of this step and of
    the next (their dropout and denoising draws) are the stock model's."""
    student = _model_cfg('DINO')
    layer = student['decoder']['layer_cfg']
    layer['self_attn_cfg']['dropout'] = 0.1
    layer['ffn_cfg']['ffn_drop'] = 0.1
    distiller = _distiller(
        'DINO', same=False, student_cfg=copy.deepcopy(student))
    with DefaultScope.overwrite_default_scope('mmdet'):
        stock = MODELS.build(copy.deepcopy(student))
    stock.load_state_dict(distiller.student.state_dict())
    distiller.train()
    stock.train()
    data = _data(distiller)
    torch.manual_seed(1)
    steps = [distiller(**data, mode='loss') for _ in range(2)]
    torch.manual_seed(1)
    expected = [
        stock.loss(data['inputs'], data['data_samples']) for _ in range(2)
    ]
    assert distiller.terms[0].group.decoded == dict(student=2, teacher=2)
    for losses, stock_losses in zip(steps, expected):
        _assert_stock_losses(losses, stock_losses)


def test_class_logits_reads_each_layer(dino_pair):
    """Each distilled layer is scored by its own class branch."""
    model = dino_pair.student
    hidden = torch.randn(model.decoder.num_layers, 2, 3, model.embed_dims)
    out = class_logits(model, hidden, [0, 5])
    torch.testing.assert_close(
        out[1], model.bbox_head.cls_branches[5](hidden[5]).reshape(6, -1))
    assert isinstance(dino_pair.terms[0].loss, DISTLoss)


def test_fg_weight_and_row_count():
    """Rows are (image, query); with fg_weight the teacher's foreground
    score weights them, DETR's from its no-object column."""
    distiller = _distiller(
        'DETR', same=False, queries=dict(num_random=7, num_teacher=5))
    term = distiller.terms[0]
    assert term.loss.activation == 'softmax'
    seen = _spy(term)
    distiller.train()
    distiller(**_data(distiller), mode='loss')
    teacher = seen['teachers'][0]
    assert teacher.shape == (2 * 12, 81)
    weight = term.group.row_weight(teacher, 'softmax')
    torch.testing.assert_close(weight, 1 - teacher.softmax(-1)[:, -1])


def test_teacher_of_another_label_set_is_mapped_by_name():
    """A DINO teacher whose class columns are the student's in another
    order, plus two classes the student lacks (scored far below the rest),
    mapped by name: on the shared queries its mapped logits are the
    student's (float64, eval mode) and DIST is 0."""
    names = ['a', 'b', 'c', 'd', 'e']
    teacher_names = ['x', 'c', 'a', 'e', 'y', 'b', 'd']
    columns = [teacher_names.index(name) for name in names]
    student_cfg = _model_cfg('DINO')
    student_cfg['bbox_head']['num_classes'] = len(names)
    teacher_cfg = copy.deepcopy(student_cfg)
    teacher_cfg['bbox_head']['num_classes'] = len(teacher_names)
    teacher_cfg['_scope_'] = 'mmdet'
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        distiller = MODELS.build(
            dict(
                type='mmdist.Distiller',
                student=student_cfg,
                teacher=teacher_cfg,
                student_classes=names,
                teacher_classes=teacher_names,
                distill_terms=[
                    dict(head='bbox_head', loss=dict(type='mmdist.DISTLoss'))
                ],
                teacher_check_iters=0))
    student, teacher = distiller.student, distiller.teacher
    student.init_weights()
    own = teacher.state_dict()
    state = {}
    for key, value in student.state_dict().items():
        if own[key].shape == value.shape:
            state[key] = value
        else:  # a class-indexed row: the student's, moved to its column
            rows = torch.full_like(own[key], -30. if value.dim() == 1 else 0.)
            rows[columns] = value
            state[key] = rows
    teacher.load_state_dict(state)
    distiller = distiller.double().eval()
    term = distiller.terms[0]
    assert term.class_mapping is not None
    data = _data(distiller, training=False)
    inputs, samples = data['inputs'].double(), data['data_samples']
    group = term.group
    with torch.no_grad():
        group.teacher_records.start()
        group.teacher_step(teacher, teacher.extract_feat(inputs), samples)
        teachers = list(group.teacher_records.records)
        group.teacher_records.stop()
    image, _ = encode(student, student.extract_feat(inputs), samples)
    students = decode(student, detector_kind(student), image, group.points,
                      group.student_layers)
    assert teachers[0].shape[-1] == 7 and students[0].shape[-1] == 5
    mapped = term.map_teacher(teachers[0])
    assert (students[0] - mapped).abs().max() <= 1e-6
    assert term.loss(students[0], mapped).abs() <= 1e-6


def test_other_class_counts_without_names_are_refused():
    """Class counts that differ and no names to map them: the refusal says
    how to map (the configs' class names or a class_map)."""
    student_cfg = _model_cfg('DINO')
    teacher_cfg = copy.deepcopy(student_cfg)
    teacher_cfg['bbox_head']['num_classes'] = 7
    with DefaultScope.overwrite_default_scope('mmdet'), pytest.raises(
            ValueError, match='class_map'):
        MODELS.build(
            dict(
                type='mmdist.Distiller',
                student=student_cfg,
                teacher=teacher_cfg,
                distill_terms=[
                    dict(head='bbox_head', loss=dict(type='mmdist.DISTLoss'))
                ],
                teacher_check_iters=0))


def test_explicit_term_without_queries_is_refused():
    student = _model_cfg('DETR')
    teacher = dict(copy.deepcopy(student), _scope_='mmdet')
    with DefaultScope.overwrite_default_scope('mmdet'):
        with pytest.raises(ValueError, match='shared distillation queries'):
            MODELS.build(
                dict(
                    type='mmdist.Distiller',
                    student=student,
                    teacher=teacher,
                    distill_terms=[
                        dict(
                            student_module='bbox_head.fc_cls',
                            teacher_module='bbox_head.fc_cls',
                            loss=dict(type='mmdist.DISTLoss'))
                    ]))


def test_unknown_option_and_mixed_query_kinds():
    with pytest.raises(ValueError, match='unknown options'):
        QueryDistillTerm(
            student_module='bbox_head',
            teacher_module='bbox_head',
            loss=dict(type='mmdist.DISTLoss'),
            queries=dict(count=3))
    with pytest.raises(ValueError, match='take different queries'):
        _distiller(
            'DAB-DETR', same=False, teacher_cfg=_model_cfg('Conditional DETR'))


@pytest.mark.heavy
@pytest.mark.parametrize('suffix', ['dist', 'kd'])
def test_shipped_dino_pair_steps_and_predicts(suffix):
    """The shipped Swin-L -> R50 DINO pair (random weights, offline):
    one training step with a finite, positive term, then predict."""
    from mmengine.registry import init_default_scope

    from helpers import load_offline, train_step
    from mmdist.utils import build_model
    cfg = load_offline('mmdet/dino-5scale_swin-l_to_dino-4scale_r50_8xb2-'
                       f'12e_coco_{suffix}.py')
    cfg.model.teacher_precision = 'float32'
    init_default_scope('mmdet')
    distiller = build_model(cfg)
    distiller.student.init_weights()
    # 256x256: the two-stage top-k of 900 queries needs 900 tokens.
    batch = det_batch(size=(256, 256))
    log = train_step(distiller, copy.deepcopy(batch), lr=1e-4)
    value = log[f'loss_{suffix}']
    assert torch.isfinite(value) and value > 0
    assert distiller.terms[0].group.decoded == dict(student=1, teacher=1)
    distiller.eval()
    with torch.no_grad():
        outputs = distiller.test_step(copy.deepcopy(batch))
    assert len(outputs) == 2 and 'pred_instances' in outputs[0]
