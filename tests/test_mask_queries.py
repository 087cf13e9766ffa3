"""Shared queries of MaskFormer-style heads (issue 29): the teacher's learned
queries decoded by both transformer decoders, rows that correspond by
construction, and the student's own step untouched."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from helpers import seg_batch
from mmdist.distillers.mask_queries import MaskQueryGroup
from mmdist.losses import DISTLoss
from mmdist.testing import strip_pretrained

M2F = 'mmseg::mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py'


def small_mask2former(layers: int = 3) -> Config:
    """MMSeg's Cityscapes Mask2Former R50, cut for a 2-core CPU: fewer
    decoder and pixel-decoder layers and matching points."""
    path, _ = Config._get_cfg_path(M2F, '')
    cfg = Config.fromfile(path)
    model = cfg.model
    strip_pretrained(model)
    model.data_preprocessor.size = (64, 128)
    head = model.decode_head
    head.transformer_decoder.num_layers = layers
    head.pixel_decoder.encoder.num_layers = 1
    head.train_cfg.num_points = 256
    return model


def build(model_cfg: Config, seed: int = 0):
    from mmseg.registry import MODELS
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(copy.deepcopy(model_cfg))
    model.init_weights()
    return model


def freeze_norms(model):
    """BatchNorm on running statistics, so that a training-mode student
    computes what an eval-mode copy of it computes."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


@pytest.fixture(scope='module')
def cfg():
    return small_mask2former()


@pytest.fixture(scope='module')
def batch():
    return seg_batch()


def step(student, teacher, group, data, train=False):
    """One step as the distiller runs it: teacher group, student loss,
    student group; returns the stock losses and the two groups' rows."""
    group.student_records.start()
    group.teacher_records.start()
    try:
        with torch.no_grad():
            feats = teacher.extract_feat(data['inputs'])
            group.teacher_step(teacher, feats, data['data_samples'])
        losses = student.loss(data['inputs'], data['data_samples'])
        group.student_step(student)
        return (losses, list(group.student_records.records),
                list(group.teacher_records.records))
    finally:
        group.student_records.stop()
        group.teacher_records.stop()


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_student_equal_to_teacher_gives_equal_rows(cfg, batch, train):
    teacher = build(cfg).eval()
    student = copy.deepcopy(teacher)
    student.train(train)
    freeze_norms(student)
    group = MaskQueryGroup(student, teacher, 'decode_head', 'decode_head')
    data = student.data_preprocessor(batch, True)
    _, (s_rows, ), (t_rows, ) = step(student, teacher, group, data)
    assert s_rows.shape == t_rows.shape == (2 * 100, 20)
    assert float((s_rows - t_rows).abs().max()) <= 1e-5
    loss = DISTLoss(activation='softmax')(s_rows, t_rows)
    assert float(loss) <= 1e-6
    grads = torch.autograd.grad(loss, s_rows)[0]
    assert float(grads.abs().max()) <= 1e-6
    assert group.decoded == dict(student=1, teacher=1)


def test_other_student_learns_through_the_group(cfg, batch):
    teacher = build(cfg, seed=1).eval()
    student = build(cfg, seed=2)
    group = MaskQueryGroup(
        student, teacher, 'decode_head', 'decode_head', layers='all')
    data = student.data_preprocessor(batch, True)
    _, s_rows, t_rows = step(student, teacher, group, data, train=True)
    assert len(s_rows) == len(t_rows) == 4  # before layer 1, then 3 layers
    loss = sum(
        DISTLoss(activation='softmax')(s, t) for s, t in zip(s_rows, t_rows))
    assert float(loss) > 0
    head = student.decode_head
    params = dict(
        decoder=head.transformer_decoder.layers[-1].ffn.layers[0][0].weight,
        pixel_decoder=head.pixel_decoder.input_convs[0].conv.weight,
        backbone=student.backbone.conv1.weight)
    grads = torch.autograd.grad(loss, list(params.values()))
    for name, grad in zip(params, grads):
        assert float(grad.abs().sum()) > 0, name


def test_student_step_is_the_stock_step(cfg, batch):
    """Same losses and predictions as the stock model, and the student's
    query weights are back in place after the group is decoded."""
    teacher = build(cfg, seed=1).eval()
    stock = build(cfg, seed=2)
    student = copy.deepcopy(stock)
    group = MaskQueryGroup(student, teacher, 'decode_head', 'decode_head')
    data = student.data_preprocessor(batch, True)
    torch.manual_seed(3)
    expected = stock.loss(data['inputs'], data['data_samples'])
    torch.manual_seed(3)
    losses, s_rows, _ = step(student, teacher, group, data, train=True)
    assert group.decoded == dict(student=1, teacher=1) and s_rows
    assert sorted(losses) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(
            losses[key], expected[key], rtol=1e-5, atol=0)
    head = student.decode_head
    assert head.query_feat.weight.data_ptr() != (
        teacher.decode_head.query_feat.weight.data_ptr())
    assert 'forward' not in head.pixel_decoder.__dict__
    stock.eval()
    student.eval()
    with torch.no_grad():
        mine = student.predict(data['inputs'], data['data_samples'])
        theirs = stock.predict(data['inputs'], data['data_samples'])
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(
            a.seg_logits.data, b.seg_logits.data, rtol=1e-5, atol=0)


def test_widths_and_classes_must_meet(cfg):
    teacher = build(cfg)
    narrow = copy.deepcopy(cfg)
    head = narrow.decode_head
    head.feat_channels = head.out_channels = 128
    head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.embed_dims = 128
    head.pixel_decoder.encoder.layer_cfg.ffn_cfg.embed_dims = 128
    head.pixel_decoder.positional_encoding.num_feats = 64
    head.positional_encoding.num_feats = 64
    layer = head.transformer_decoder.layer_cfg
    layer.self_attn_cfg.embed_dims = layer.cross_attn_cfg.embed_dims = 128
    layer.ffn_cfg.embed_dims = 128
    with pytest.raises(ValueError, match='128 wide .* 256'):
        MaskQueryGroup(build(narrow), teacher, 'decode_head', 'decode_head')
    other = copy.deepcopy(cfg)
    other.decode_head.num_classes = 8
    other.decode_head.loss_cls.class_weight = [1.0] * 8 + [0.1]
    with pytest.raises(ValueError, match='9 classes .* 20'):
        MaskQueryGroup(build(other), teacher, 'decode_head', 'decode_head')


def test_mmdet_panoptic_mask2former_rows_correspond():
    """MMDetection's panoptic Mask2Former: the same head classes in the
    ``panoptic_head`` slot; student = teacher gives equal rows."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    path, _ = Config._get_cfg_path(
        'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py', '')
    model_cfg = Config.fromfile(path).model
    strip_pretrained(model_cfg)
    model_cfg.data_preprocessor.batch_augments = None
    head = model_cfg.panoptic_head
    head.transformer_decoder.num_layers = 2
    head.pixel_decoder.encoder.num_layers = 1
    with DefaultScope.overwrite_default_scope('mmdet'):
        teacher = MODELS.build(model_cfg)
    teacher.init_weights()
    teacher.eval()
    student = copy.deepcopy(teacher)
    group = MaskQueryGroup(student, teacher, 'panoptic_head', 'panoptic_head')
    batch = demo_mm_inputs(2, [(3, 64, 96)] * 2, num_classes=133)
    data = student.data_preprocessor(batch, False)
    group.student_records.start()
    group.teacher_records.start()
    with torch.no_grad():
        group.teacher_step(teacher, teacher.extract_feat(data['inputs']),
                           data['data_samples'])
        student.predict(data['inputs'], data['data_samples'])
        group.student_step(student)
    (s_rows, ), (t_rows, ) = (group.student_records.records,
                              group.teacher_records.records)
    assert s_rows.shape == (2 * 100, 134)
    assert float((s_rows - t_rows).abs().max()) <= 1e-5
    assert float(DISTLoss(activation='softmax')(s_rows, t_rows)) <= 1e-6


# ------------------------------------------------------------ distiller
def mask2former_distiller(cfg, same: bool, queries=None):
    """A distiller on the small Mask2Former, its teacher the same config
    (``same``: with the student's weights), short form on decode_head."""
    from mmengine.registry import MODELS
    teacher = copy.deepcopy(cfg)
    teacher['_scope_'] = 'mmseg'
    term = dict(head='decode_head', loss=dict(type='mmdist.DISTLoss'))
    if queries is not None:
        term['queries'] = queries
    with DefaultScope.overwrite_default_scope('mmseg'):
        torch.manual_seed(0)
        distiller = MODELS.build(
            dict(
                type='mmdist.Distiller',
                student=copy.deepcopy(cfg),
                teacher=teacher,
                distill_terms=[term]))
    distiller.student.init_weights()
    if same:
        distiller.teacher.load_state_dict(distiller.student.state_dict())
    return distiller


def test_distiller_short_form_and_isolation(cfg, batch):
    """The short form gives a shared-query term; in a distiller step the
    student's own losses are the stock model's, the term is 0 for a student
    equal to its teacher, and both models decoded the group."""
    from mmdist.distillers.queries import QueryDistillTerm
    distiller = mask2former_distiller(cfg, same=True)
    (term, ) = distiller.terms
    assert isinstance(term, QueryDistillTerm)
    assert isinstance(term.group, MaskQueryGroup)
    assert term.loss.activation == 'softmax'
    stock = build(cfg)
    stock.load_state_dict(distiller.student.state_dict())
    distiller.eval()  # BatchNorm and dropout as the teacher's
    stock.eval()
    data = distiller.data_preprocessor(copy.deepcopy(batch), True)
    torch.manual_seed(1)
    losses = distiller.loss(data['inputs'], data['data_samples'])
    torch.manual_seed(1)
    expected = stock.loss(data['inputs'], data['data_samples'])
    assert term.group.decoded == dict(student=1, teacher=1)
    assert float(losses['loss_dist']) <= 1e-6
    own = {k: v for k, v in losses.items() if not k.startswith('loss_dist')}
    own.pop('teacher_acc', None)
    assert set(own) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(own[key], value, rtol=1e-5, atol=1e-6)


def test_mask_group_refuses_box_options(cfg):
    with pytest.raises(ValueError, match=r"\['num_random'\] are for DETR"):
        mask2former_distiller(cfg, same=False, queries=dict(num_random=10))


@pytest.mark.heavy
@pytest.mark.parametrize('kind', ['dist', 'kd'])
def test_shipped_cityscapes_pair_steps_and_predicts(kind):
    """The shipped Mask2Former Swin-L -> R50 pair (random weights,
    offline): one training step with a finite, positive term, then
    predict."""
    from helpers import build as build_shipped
    from helpers import load_offline, train_step
    cfg = load_offline('mmseg/mask2former_swin-l-in22k_to_r50_8xb2-90k_'
                       f'cityscapes-512x1024_{kind}.py')
    cfg.model.student.data_preprocessor.size = (64, 128)
    distiller = build_shipped(cfg)
    log = train_step(distiller, seg_batch(), lr=1e-4)
    assert torch.isfinite(log[f'loss_{kind}']) and log[f'loss_{kind}'] > 0
    assert distiller.terms[0].group.decoded == dict(student=1, teacher=1)
    distiller.eval()
    with torch.no_grad():
        outputs = distiller.test_step(seg_batch())
    assert len(outputs) == 2 and 'pred_sem_seg' in outputs[0]
