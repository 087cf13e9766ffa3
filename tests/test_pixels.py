"""The pixel probe reads every preprocessor setting the zoos use."""
import pytest
import torch

from helpers import det_batch, seg_batch
from mmdist.distillers import InputRenormaliser, pixel_map

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def _expected(mean, std, bgr_to_rgb):
    """A and b of out = A @ pixel + b for (x[perm] - mean) / std."""
    perm = [2, 1, 0] if bgr_to_rgb else [0, 1, 2]
    matrix = torch.zeros(3, 3, dtype=torch.float64)
    for out, src in enumerate(perm):
        matrix[out, src] = 1 / std[out]
    bias = -torch.tensor(
        mean, dtype=torch.float64) / torch.tensor(
            std, dtype=torch.float64)
    return matrix, bias


def _seg_preprocessors():
    from mmseg.models import SegDataPreProcessor
    return {
        # SegNeXt, Mask2Former, SAN: test-time padding to a multiple of 32.
        'test_cfg size_divisor':
        SegDataPreProcessor(
            mean=MEAN,
            std=STD,
            bgr_to_rgb=True,
            size=(64, 64),
            pad_val=0,
            seg_pad_val=255,
            test_cfg=dict(size_divisor=32)),
        'test_cfg size':
        SegDataPreProcessor(
            mean=MEAN,
            std=STD,
            bgr_to_rgb=True,
            pad_val=7,
            seg_pad_val=0,
            test_cfg=dict(size=(64, 64))),
        'size_divisor':
        SegDataPreProcessor(
            mean=MEAN, std=STD, bgr_to_rgb=False, size_divisor=32),
    }


@pytest.mark.parametrize('setting', list(_seg_preprocessors()))
def test_seg_preprocessor_settings(setting):
    preprocessor = _seg_preprocessors()[setting]
    matrix, bias = pixel_map(preprocessor)
    want_m, want_b = _expected(MEAN, STD, preprocessor.channel_conversion)
    assert torch.allclose(matrix, want_m, atol=1e-6)
    assert torch.allclose(bias, want_b, atol=1e-5)


def test_seg_student_batch_reaches_teacher_as_its_own():
    """A SegNeXt-style teacher (test-time padding) fed a student batch gets
    exactly what its own preprocessor makes of the images."""
    from mmseg.models import SegDataPreProcessor
    student = SegDataPreProcessor(
        mean=[0., 0., 0.],
        std=[255., 255., 255.],
        bgr_to_rgb=False,
        size=(64, 128))
    teacher = SegDataPreProcessor(
        mean=MEAN,
        std=STD,
        bgr_to_rgb=True,
        size=(64, 128),
        test_cfg=dict(size_divisor=32))
    batch = seg_batch(size=(64, 128))
    renorm = InputRenormaliser(student, teacher)
    student_in = student(batch, True)
    mapped = renorm(student_in['inputs'], student_in['data_samples'])
    teacher_in = teacher(seg_batch(size=(64, 128)), True)
    assert torch.allclose(mapped, teacher_in['inputs'], atol=1e-4)


def test_det_batch_augments_and_pad_value():
    """MMDet's LSJ configs: BatchFixedSizePad in training, a pad value."""
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    preprocessor = DetDataPreprocessor(
        mean=MEAN,
        std=STD,
        bgr_to_rgb=True,
        pad_size_divisor=32,
        pad_value=3,
        batch_augments=[
            # Scoped: another test may have left a default scope set.
            dict(
                type='mmdet.BatchFixedSizePad', size=(96, 96), pad_mask=False)
        ])
    matrix, bias = pixel_map(preprocessor)
    want_m, want_b = _expected(MEAN, STD, True)
    assert torch.allclose(matrix, want_m, atol=1e-6)
    assert torch.allclose(bias, want_b, atol=1e-5)
    plain = DetDataPreprocessor(
        mean=[0., 0., 0.], std=[1., 1., 1.], pad_size_divisor=32)
    renorm = InputRenormaliser(plain, preprocessor)
    batch = det_batch(size=(60, 90), batch=2)
    student_in = plain(batch, False)
    mapped = renorm(student_in['inputs'], student_in['data_samples'])
    assert torch.allclose(
        mapped,
        preprocessor(det_batch(size=(60, 90), batch=2), False)['inputs'],
        atol=1e-4)


def test_cls_batch_augments():
    from mmpretrain.models import ClsDataPreprocessor
    preprocessor = ClsDataPreprocessor(
        mean=MEAN,
        std=STD,
        to_rgb=True,
        num_classes=10,
        batch_augments=dict(augments=[dict(type='Mixup', alpha=0.8)]))
    matrix, bias = pixel_map(preprocessor)
    want_m, want_b = _expected(MEAN, STD, True)
    assert torch.allclose(matrix, want_m, atol=1e-6)
    assert torch.allclose(bias, want_b, atol=1e-5)
