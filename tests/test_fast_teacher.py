"""The teacher's fast form (``teacher_precision='bf16'``).

Folding is checked for exactness (float64: to rounding; float32: within
1e-5 of the output's scale) and for the cases it must leave alone. The
fast form is checked against the same teacher run the stock way (same
weights, same images): folded + channels_last in float32 within 1e-4 of the
output's scale, the bf16 form within ``BF16_TOLERANCE`` relative L2 error
(bf16 keeps 8 significant bits; measured here: 0.03% to 1.2%, the largest on
a random cascade box head's near-zero logits).
"""
import copy
import logging

import pytest
import torch
from torch import nn

from mmdist.distillers import fast_form
from mmdist.distillers.fast_form import (FP16_ON_CPU, TeacherForm,
                                         find_conv_bn_pairs, fold_batchnorm,
                                         make_fast, output_agreement,
                                         resolve_precision, to_float32)

BF16_TOLERANCE = 0.05  # ||fast - stock|| / ||stock||


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest value of ``b``."""
    return float((a.double() - b.double()).abs().max() / b.abs().max())


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against ``b``."""
    return float((a.double() - b.double()).norm() / b.double().norm())


class Block(nn.Module):
    """conv-BN pairs of several kinds, and one of each kind not to fold."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.grouped_bn = nn.BatchNorm2d(8)
        self.no_affine = nn.Conv2d(8, 8, 1)
        self.no_affine_bn = nn.BatchNorm2d(8, affine=False)
        # Output also used by the residual: folding would change it.
        self.shared = nn.Conv2d(8, 8, 1)
        self.shared_bn = nn.BatchNorm2d(8)
        # One conv, two BatchNorms (a head shared across levels).
        self.level_conv = nn.Conv2d(8, 8, 1)
        self.level_bns = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])
        # A BatchNorm after a non-conv op.
        self.after_pool = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.grouped_bn(self.grouped(x)))
        x = self.no_affine_bn(self.no_affine(x))
        y = self.shared(x)
        x = self.shared_bn(y) + y
        x = sum(bn(self.level_conv(x)) for bn in self.level_bns)
        return self.after_pool(torch.max_pool2d(x, 2))


def test_pairs_are_read_from_the_dataflow():
    model = randomise_norms(Block())
    x = torch.randn(2, 3, 16, 16)
    pairs = find_conv_bn_pairs(model, lambda: model(x))
    assert sorted(pairs) == [('grouped', 'grouped_bn'),
                             ('no_affine', 'no_affine_bn'),
                             ('stem.0', 'stem.1')]
    # A module whose own output must stay (a distilled conv) is kept.
    kept = find_conv_bn_pairs(model, lambda: model(x), keep=['grouped'])
    assert ('grouped', 'grouped_bn') not in kept
    # Training-mode BatchNorm normalises by the batch: never folded.
    model.stem[1].train()
    assert ('stem.0',
            'stem.1') not in find_conv_bn_pairs(model, lambda: model(x))


@pytest.mark.parametrize('dtype,tolerance', [(torch.float64, 1e-12),
                                             (torch.float32, 1e-5)])
def test_folding_is_exact_to_rounding(dtype, tolerance):
    model = randomise_norms(Block()).to(dtype)
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    with torch.no_grad():
        stock = model(x)
        folded = copy.deepcopy(model)
        pairs = fold_batchnorm(folded, lambda: folded(x))
        assert len(pairs) == 3
        assert isinstance(folded.stem[1], nn.Identity)
        assert isinstance(folded.shared_bn, nn.BatchNorm2d)
        assert relative(folded(x), stock) < tolerance


def tiny_resnet() -> nn.Module:
    """A small residual network with a classifier (10 classes)."""

    class Residual(nn.Module):

        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    return randomise_norms(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
            nn.ReLU(), Residual(16), Residual(16), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(16, 10)))


def test_fast_form_against_the_stock_teacher():
    stock = tiny_resnet()
    x = torch.randn(8, 3, 32, 32)
    fast = copy.deepcopy(stock)
    form = make_fast(fast, torch.bfloat16, lambda: fast(x[:1]), outputs=['7'])
    assert form.is_fast and len(form.folded) == 5
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    inner = []
    fast[3].body.register_forward_hook(
        lambda module, args, output: inner.append(output.dtype))
    with torch.no_grad(), form.autocast('cpu'):
        out = fast(form.prepare(x))
    with torch.no_grad():
        ref = stock(x)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert inner == [torch.bfloat16]  # inside: low precision
    assert relative_l2(out, ref) < BF16_TOLERANCE
    stats = output_agreement(out, ref)
    assert stats['top1_agreement'] >= 0.875 and stats['kl'] < 1e-2


def test_float32_form_changes_nothing():
    form = TeacherForm()
    x = torch.randn(1, 3, 4, 4)
    assert not form.is_fast and form.prepare(x) is x
    with form.autocast('cpu'):
        assert not torch.is_autocast_enabled('cpu')
    assert to_float32(x) is x


def test_to_float32_walks_containers():
    half = torch.randn(1, 2, 3, 3).to(
        torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = to_float32((half, [half], {'a': half}, 3))
    for tensor in (out[0], out[1][0], out[2]['a']):
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert out[3] == 3


def test_fp16_on_a_cpu_is_refused_with_the_reason():
    with pytest.raises(ValueError, match='refused on a CPU') as error:
        resolve_precision('fp16', 'cpu')
    assert str(error.value) == FP16_ON_CPU
    with pytest.raises(ValueError, match='teacher_precision must be one of'):
        resolve_precision('int8', 'cpu')
    assert resolve_precision('float32', 'cpu') == (None, None)


def test_bf16_falls_back_without_the_instructions(monkeypatch):
    monkeypatch.delenv(fast_form.BF16_ENV, raising=False)
    monkeypatch.setattr(
        torch.cpu, 'get_capabilities',
        lambda: dict(cpu_name='Old CPU', avx512_bf16=False, amx_bf16=False))
    dtype, line = resolve_precision('bf16', 'cpu')
    assert dtype is None
    assert line == ("teacher_precision='bf16': Old CPU has neither AMX-BF16 "
                    'nor AVX512-BF16, so the teacher runs in float32')
    monkeypatch.setattr(
        torch.cpu, 'get_capabilities',
        lambda: dict(cpu_name='New CPU', avx512_bf16=False, amx_bf16=True))
    assert resolve_precision('bf16', 'cpu') == (torch.bfloat16, None)


@pytest.mark.parametrize('value,expected', [('0', False), ('off', False),
                                            ('1', True), ('on', True)])
def test_the_environment_variable_overrides_the_hardware(
        monkeypatch, value, expected):
    """MMDIST_BF16 decides for every device, whatever the CPU reports."""
    monkeypatch.setenv(fast_form.BF16_ENV, value)
    for caps in (dict(avx512_bf16=True), dict(avx512_bf16=False)):
        monkeypatch.setattr(
            torch.cpu,
            'get_capabilities',
            lambda caps=caps: dict(cpu_name='CPU', **caps))
        supported, why = fast_form.bf16_support('cpu')
        assert supported is expected and why.startswith('MMDIST_BF16=')
    dtype, line = resolve_precision('bf16', 'cpu')
    assert dtype == (torch.bfloat16 if expected else None)
    assert (line is None) == expected


def test_the_environment_variable_refuses_other_values(monkeypatch):
    monkeypatch.setenv(fast_form.BF16_ENV, 'maybe')
    with pytest.raises(ValueError, match="MMDIST_BF16='maybe'"):
        fast_form.bf16_support('cpu')
    monkeypatch.setenv(fast_form.BF16_ENV, 'auto')
    monkeypatch.setattr(torch.cpu, 'get_capabilities',
                        lambda: dict(cpu_name='CPU', avx512_bf16=True))
    assert fast_form.bf16_support('cpu')[0]


# --------------------------------------------------- in the distiller
@pytest.fixture
def bf16_present(monkeypatch):
    """The bf16 capability forced on, whatever the host: autocast runs
    emulated on a CPU without a bf16 unit (same numerics, slower), so the
    fast form's numerics are tested on every CPU."""
    monkeypatch.setenv(fast_form.BF16_ENV, '1')


@pytest.fixture
def bf16_absent(monkeypatch):
    """The bf16 capability forced off, whatever the host."""
    monkeypatch.setenv(fast_form.BF16_ENV, '0')


@pytest.fixture
def logged():
    from mmengine.logging import MMLogger
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def build_pair(rel_path: str, precision: str, seed: int = 0, **model):
    """A shipped or demo config offline (random teacher from ``seed``)."""
    from mmengine.config import Config

    from helpers import CONFIGS, build, load_offline
    if rel_path.startswith('demo/'):
        cfg = Config.fromfile(str(CONFIGS / rel_path))
        cfg.model.teacher_ckpt = None
    else:
        cfg = load_offline(rel_path)
    cfg.model.teacher_precision = precision
    cfg.model.update(model)
    torch.manual_seed(seed)
    return build(cfg)


def teacher_records(model, batch, two_stage=False):
    """The teacher's recorded outputs of one step's teacher plan (a
    two-stage teacher scores the student's RoIs, sampled with seed 0)."""
    model.train()
    data = model.data_preprocessor(batch, True)
    inputs, samples = data['inputs'], data['data_samples']
    with model._recording():
        if two_stage:
            torch.manual_seed(0)
            with torch.no_grad():
                model.student.loss(inputs, samples)
        model._run_teacher(inputs, samples)
        records = []
        for term in model.terms:
            levels = []
            for output in term.teacher_outputs.records:
                levels += list(output) if isinstance(output,
                                                     (tuple,
                                                      list)) else [output]
            records.append([level.clone() for level in levels])
        return records


def det_demo_batch():
    from helpers import det_batch
    return det_batch(num_classes=5)


def seg_demo_batch():
    from helpers import seg_batch
    return seg_batch(size=(64, 128))


def cifar_batch():
    from helpers import cls_batch
    return cls_batch(100, size=32)


def two_stage_batch():
    from helpers import det_batch
    return det_batch()


PAIRS = {
    # name: (config, batch, two-stage, extra model keys)
    'retinanet': ('demo/det_student_dist.py', det_demo_batch, False, {}),
    'deeplabv3 + aux': ('demo/seg_student_dist.py', seg_demo_batch, False, {}),
    'resnet-50': ('mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py',
                  cifar_batch, False, {}),
    # The cascade's box heads on the student's RoIs, RoIAlign in float32
    # (R50 instead of the shipped X101 keeps the test short).
    'cascade rois': ('mmdet/cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50'
                     '_fpn_2x_coco_dist.py', two_stage_batch, True,
                     dict(teacher='mmdet::cascade_rcnn/cascade-mask-rcnn_'
                          'r50_fpn_1x_coco.py')),
}


@pytest.mark.parametrize('name', list(PAIRS))
def test_fast_teacher_against_the_stock_teacher(name, bf16_present):
    path, batch, two_stage, extra = PAIRS[name]
    stock = build_pair(path, 'float32', **extra)
    fast = build_pair(path, 'bf16', **extra)
    assert fast.teacher_form.is_fast and fast.teacher_form.folded
    assert not stock.teacher_form.is_fast
    batch = batch()
    expected = teacher_records(stock, batch, two_stage)
    got = teacher_records(fast, batch, two_stage)
    for term, refs, outs in zip(stock.terms, expected, got):
        assert len(refs) == len(outs) > 0
        for ref, out in zip(refs, outs):
            assert out.dtype == torch.float32 and out.is_contiguous()
            assert out.shape == ref.shape
            assert relative_l2(out, ref) < BF16_TOLERANCE, term.name


def test_folded_teacher_is_the_stock_teacher_in_float32():
    """Folding and channels_last on a real teacher, without autocast:
    the same outputs to float32 rounding."""
    model = build_pair('demo/det_student_dist.py', 'float32')
    randomise_norms(model.teacher)
    batch = model.data_preprocessor(det_demo_batch(), True)['inputs']
    with torch.no_grad():
        stock = model.teacher.extract_feat(batch)
        pairs = fold_batchnorm(
            model.teacher,
            lambda: model.teacher_forward.features(model.teacher, batch))
        model.teacher.to(memory_format=torch.channels_last)
        folded = model.teacher.extract_feat(
            batch.contiguous(memory_format=torch.channels_last))
    assert len(pairs) == 36  # every BatchNorm of the ResNet-34
    for ref, out in zip(stock, folded):
        assert relative(out, ref) < 1e-4


def test_the_step_and_its_losses_stay_float32(bf16_present):
    model = build_pair('demo/seg_student_dist.py', 'bf16')
    inside = []
    model.teacher.backbone.layer4.register_forward_hook(
        lambda module, args, output: inside.append(output.dtype))
    from helpers import train_step
    log_vars = train_step(model, seg_demo_batch())
    assert inside == [torch.bfloat16]
    for key in ('loss_dist', 'loss_dist_aux'):
        assert log_vars[key].dtype == torch.float32
        assert torch.isfinite(log_vars[key])
    # The teacher stays out of the checkpoint and keeps its form.
    assert not any(k.startswith('teacher') for k in model.state_dict())
    assert copy.deepcopy(model).teacher_form.is_fast


def test_predict_with_the_teacher_uses_its_form(bf16_present):
    """tools/test.py --teacher: predictions of the fast teacher."""
    stock = build_pair(
        'demo/seg_student_dist.py', 'float32', predict_with='teacher')
    fast = build_pair(
        'demo/seg_student_dist.py', 'bf16', predict_with='teacher')
    results = {}
    for key, model in (('stock', stock), ('fast', fast)):
        model.eval()
        data = model.data_preprocessor(seg_demo_batch(), False)
        with torch.no_grad():
            results[key] = model(**data, mode='predict')
    for ref, out in zip(results['stock'], results['fast']):
        logits = out.seg_logits.data
        assert logits.dtype == torch.float32
        assert relative_l2(logits, ref.seg_logits.data) < BF16_TOLERANCE


def test_fallback_to_float32_is_one_log_line(monkeypatch, logged):
    monkeypatch.setattr(fast_form, 'bf16_support', lambda device:
                        (False, 'Old CPU has no bf16'))
    model = build_pair('demo/det_student_dist.py', 'bf16')
    assert not model.teacher_form.is_fast
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.teacher.modules())
    lines = [line for line in logged if 'teacher_precision' in line]
    assert lines == [
        "teacher_precision='bf16': Old CPU has no bf16, so the "
        'teacher runs in float32'
    ]


def test_bf16_absent_keeps_the_stock_teacher(bf16_absent, logged):
    """MMDIST_BF16=0: a bf16 config builds the float32 teacher, one line."""
    model = build_pair('demo/det_student_dist.py', 'bf16')
    assert not model.teacher_form.is_fast
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.teacher.modules())
    assert [line for line in logged if 'teacher_precision' in line] == [
        "teacher_precision='bf16': MMDIST_BF16=0 reports bf16 absent, so "
        'the teacher runs in float32'
    ]


def test_fp16_refused_and_teacher_autocast_deprecated(logged, bf16_present):
    with pytest.raises(ValueError, match='refused on a CPU'):
        build_pair('demo/det_student_dist.py', 'fp16')
    model = build_pair(
        'demo/det_student_dist.py', 'float32', teacher_autocast='bf16')
    assert model.teacher_precision == 'bf16' and model.teacher_form.is_fast
    assert any('teacher_autocast is deprecated' in line for line in logged)
    with pytest.raises(ValueError, match='contradicts'):
        build_pair('demo/det_student_dist.py', 'fp16', teacher_autocast='bf16')
