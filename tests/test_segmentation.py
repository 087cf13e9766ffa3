"""Segmentation distillation: shipped Cityscapes configs, resize and ignore
paths, bad input."""
import copy

import pytest
import torch

from helpers import build
from helpers import load_offline as _load_offline
from helpers import seg_batch, shipped_configs, train_step
from mmdist.distillers import DistillTerm
from mmdist.losses import DISTLoss

SEG_CONFIGS = shipped_configs('mmseg')
DLV3 = ('mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-'
        '512x1024_dist.py')
SEGFORMER = ('mmseg/segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_'
             'cityscapes-512x1024_dist.py')


def load_offline(path):
    """A shipped config offline, with the student padding to the test batch
    size instead of the 512x1024 Cityscapes crop."""
    cfg = _load_offline(path)
    cfg.model.student.data_preprocessor.size = (64, 128)
    return cfg


def test_all_pairs_shipped():
    assert len(SEG_CONFIGS) >= 6
    for path in SEG_CONFIGS:
        if path.endswith('_dist.py'):
            assert path.replace('_dist.py', '_kd.py') in SEG_CONFIGS


# The Mask2Former pair (a Swin-L teacher) steps in test_mask_queries.py.
@pytest.mark.parametrize(
    'path', [p for p in SEG_CONFIGS if not p.startswith('mmseg/mask2former')])
def test_config_takes_a_training_step(path):
    model = build(load_offline(path))
    log_vars = train_step(model, seg_batch())
    kind = 'dist' if path.endswith('_dist.py') else 'kd'
    loss = log_vars[f'loss_{kind}']
    assert torch.isfinite(loss) and float(loss) > 0
    assert 'decode.loss_ce' in log_vars
    if 'segformer' not in path:
        aux = log_vars[f'loss_{kind}_aux']
        assert torch.isfinite(aux) and float(aux) > 0


def test_teacher_dropout_off_in_training():
    model = build(load_offline(DLV3))
    model.train()
    dropouts = [
        m for m in model.teacher.modules()
        if isinstance(m, torch.nn.Dropout2d)
    ]
    assert dropouts and all(not m.training for m in dropouts)


def test_resize_path_matches_manual_bilinear():
    term = DistillTerm(
        'a', 'b', dict(type='mmdist.DISTLoss'), resize_teacher=True)
    student = torch.randn(2, 19, 8, 16)
    teacher = torch.randn(2, 19, 16, 32)
    aligned = term.align_teacher(student, teacher)
    manual = torch.nn.functional.interpolate(
        teacher, size=(8, 16), mode='bilinear', align_corners=False)
    assert torch.allclose(aligned, manual)
    assert float(DISTLoss()(student, aligned)) == pytest.approx(
        float(DISTLoss()(student, manual)))
    strict = DistillTerm('a', 'b', dict(type='mmdist.DISTLoss'))
    with pytest.raises(ValueError, match='resize_teacher=True'):
        strict.align_teacher(student, teacher)


def test_ignore_mask_drops_ignored_pixels():
    term = DistillTerm(
        'a', 'b', dict(type='mmdist.DISTLoss'), ignore_index=255)
    batch = seg_batch(size=(16, 32))
    student = torch.randn(2, 19, 8, 16)
    teacher = torch.randn(2, 19, 8, 16)
    weight = term.row_weight(student, batch['data_samples'])
    labels = torch.stack([s.gt_sem_seg.data for s in batch['data_samples']])
    expected = (labels[:, 0, ::2, ::2] != 255).float()
    assert torch.equal(weight, expected)
    keep = expected.reshape(-1) > 0
    rows_s = student.permute(0, 2, 3, 1).reshape(-1, 19)[keep]
    rows_t = teacher.permute(0, 2, 3, 1).reshape(-1, 19)[keep]
    masked = term.loss(student, teacher, weight)
    assert float(masked) == pytest.approx(
        float(DISTLoss()(rows_s, rows_t)), rel=1e-5)


def test_ignore_index_in_a_real_step():
    cfg = load_offline(DLV3)
    for term in cfg.model.distill_terms:
        term.ignore_index = 255
    log_vars = train_step(build(cfg), seg_batch())
    assert torch.isfinite(log_vars['loss_dist'])


# -------------------------------------------------------------- bad input
def test_class_count_mismatch_is_a_clear_error():
    cfg = load_offline(DLV3)
    teacher = copy.deepcopy(cfg.model.student)
    teacher.decode_head.num_classes = 8
    teacher.auxiliary_head.num_classes = 8
    cfg.model.teacher = teacher
    # The shipped config's short form refuses the pair at build.
    with pytest.raises(ValueError) as info:
        build(cfg)
    assert 'decode_head.conv_seg' in str(info.value)
    assert '19' in str(info.value) and '8' in str(info.value)


def test_missing_teacher_checkpoint(tmp_path):
    cfg = load_offline(DLV3)
    cfg.model.teacher_ckpt = str(tmp_path / 'absent.pth')
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        build(cfg)


def test_wrong_module_path():
    cfg = load_offline(DLV3)
    cfg.model.distill_terms = [
        dict(
            student_module='decode_head.conv_seg',
            teacher_module='decode_head.conv_sg',
            loss=dict(type='mmdist.DISTLoss'))
    ]
    with pytest.raises(KeyError, match='decode_head.conv_seg'):
        build(cfg)
