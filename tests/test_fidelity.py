"""The distiller changes nothing about what its models see and compute.

For every shipped config, on the same images and weights:

(a) the distiller's student in ``predict`` mode equals the stock student
    model that MMEngine's Runner builds from the student's own config;
(b) the distiller's teacher, fed the student's preprocessed batch, gives the
    logits of the teacher that its own config's Runner builds, fed its own
    preprocessing of the same images (also for pairs whose normalisations
    differ: caffe vs pytorch mean/std, BGR vs RGB, none vs ImageNet).

The big pairs (Cascade X101, ResNet-152, SegFormer) are marked heavy.
"""
import copy
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from helpers import (CONFIGS, cls_batch, det_batch, load_offline, seg_batch,
                     shipped_configs)
from mmdist.distillers import load_teacher_config
from mmdist.distillers.class_map import teacher_classes
from mmdist.testing import strip_pretrained
from mmdist.utils import build_model

ALL = [
    c for task in ('mmdet', 'mmseg', 'mmpretrain')
    for c in shipped_configs(task)
]
DIST = [c for c in ALL if c.endswith('_dist.py')]
# The VOC pair's teacher is the COCO RetinaNet pair's, checked quick.
HEAVY = ('cascade-mask-rcnn', 'resnet152', 'segformer', 'voc0712', 'dino-',
         'mask2former')


def marked(paths):
    return [
        pytest.param(p, marks=pytest.mark.heavy) if any(h in p
                                                        for h in HEAVY) else p
        for p in paths
    ]


def student_config_path(rel_path: str) -> str:
    """The ``_base_`` a shipped distillation config inherits (the student's
    own config), resolved like MMEngine does."""
    path = CONFIGS / rel_path
    base = Config._get_base_files(str(path))[0]
    if '::' in base:
        return Config._get_cfg_path(base, '')[0]
    return str((path.parent / base).resolve())


def stock_model(cfg: Config, model: dict, tmp_path):
    """The model MMEngine's Runner builds for ``model`` under ``cfg``."""
    runner = Runner(
        model=copy.deepcopy(model),
        work_dir=str(tmp_path / uuid.uuid4().hex),
        data_preprocessor=copy.deepcopy(cfg.get('data_preprocessor')),
        default_scope=cfg.get('default_scope', 'mmengine'),
        experiment_name=uuid.uuid4().hex)
    return runner.model.eval()


def raw_batch(path: str, num_classes: int):
    if path.startswith('mmdet'):
        # DINO's two-stage top-900 queries need 900 encoder tokens.
        size = (256, 256) if 'dino-' in path else (128, 160)
        return det_batch(num_classes=num_classes, size=size, batch=2)
    if path.startswith('mmseg'):
        return seg_batch(num_classes=num_classes, size=(64, 128))
    size = 32 if 'cifar' in path else 64
    return cls_batch(num_classes, size=size, batch=3)


def num_classes(cfg: Config, path: str) -> int:
    student = cfg.model.student
    if path.startswith('mmdet'):
        head = student.get('bbox_head') or student.roi_head.bbox_head
        return head.num_classes
    if path.startswith('mmseg'):
        return student.decode_head.num_classes
    return student.head.num_classes


def flat_tensors(out) -> list:
    """Every tensor in a (nested) model output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flat_tensors(item)]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in flat_tensors(out[key])]
    if hasattr(out, 'to_dict'):  # data samples: predictions only
        return [
            t for key, value in sorted(out.to_dict().items())
            if key.startswith(('pred', 'seg_logits'))
            for t in flat_tensors(value)
        ]
    if hasattr(out, 'keys') and hasattr(out, 'values'):
        return [
            t for key in sorted(out.keys())
            for t in flat_tensors(out.get(key))
        ]
    return []


def assert_outputs_equal(ours, stock, atol=0., rtol=0.):
    a, b = flat_tensors(ours), flat_tensors(stock)
    assert a and len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def check_pair(path: str,
               tmp_path,
               teacher_preprocessor=None,
               student_preprocessor=None,
               tolerance=0.):
    cfg = load_offline(path)
    # What the teacher sees (pixels, weights), exactly: the float32 teacher.
    # Its fast form, which the detection and segmentation configs ship
    # with, is held to the float32 one in test_fast_teacher.py.
    cfg.model.teacher_precision = 'float32'
    if student_preprocessor is not None:
        cfg.model.student.data_preprocessor = student_preprocessor
    teacher_model = load_teacher_config(cfg.model.teacher,
                                        cfg.get('data_preprocessor'))
    strip_pretrained(teacher_model)
    # Its class names, which its config file gives and a model dict cannot.
    cfg.model.teacher_classes = teacher_classes(cfg.model.teacher)
    if teacher_preprocessor is not None:
        teacher_model.data_preprocessor = teacher_preprocessor
    cfg.model.teacher = teacher_model
    distiller = build_model(cfg)
    distiller.init_weights()
    distiller.eval()
    classes = num_classes(cfg, path)
    batch = raw_batch(path, classes)

    # (a) the student, against the stock model of the student's config.
    student_cfg = Config.fromfile(student_config_path(path))
    strip_pretrained(student_cfg.model)
    if student_preprocessor is not None:
        student_cfg.model.data_preprocessor = student_preprocessor
    if path.startswith('mmpretrain'):
        student_cfg.model.head.num_classes = classes
    stock_student = stock_model(student_cfg, student_cfg.model, tmp_path)
    stock_student.load_state_dict(distiller.student.state_dict(), strict=True)
    with torch.no_grad():
        ours = distiller.test_step(copy.deepcopy(batch))
        stock = stock_student.test_step(copy.deepcopy(batch))
    assert_outputs_equal(ours, stock)

    # (b) the teacher: the distiller's renormalised student batch against
    # the teacher's own config and preprocessing.
    scope = teacher_model.pop('_scope_', None)
    teacher_cfg = Config(dict(default_scope=scope or cfg.default_scope))
    stock_teacher = stock_model(teacher_cfg, teacher_model, tmp_path)
    stock_teacher.load_state_dict(distiller.teacher.state_dict(), strict=True)
    with torch.no_grad():
        student_data = distiller.data_preprocessor(copy.deepcopy(batch))
        teacher_in = distiller.renormalise(student_data['inputs'],
                                           student_data['data_samples'])
        # MMSeg's tensor mode calls a decode head without data samples,
        # which MaskFormer-style heads need: their predictions instead.
        mode = 'predict' if 'mask2former' in path else 'tensor'
        ours = distiller.teacher(
            teacher_in, student_data['data_samples'], mode=mode)
        own = stock_teacher.data_preprocessor(copy.deepcopy(batch))
        stock = stock_teacher(own['inputs'], own['data_samples'], mode=mode)
        if distiller.renormalise.needed:
            torch.testing.assert_close(
                teacher_in, own['inputs'], atol=1e-4, rtol=1e-5)
        else:
            assert torch.equal(teacher_in, own['inputs'])
    assert_outputs_equal(ours, stock, atol=tolerance, rtol=tolerance)
    return distiller


@pytest.mark.parametrize('path', marked(DIST))
def test_student_and_teacher_see_what_their_configs_declare(path, tmp_path):
    # Exact, but for attention teachers: with frozen weights PyTorch runs
    # another attention kernel (differences of about 1e-5 of the logits).
    attention = any(k in path for k in ('segformer', 'dino-', 'mask2former'))
    check_pair(path, tmp_path, tolerance=1e-4 if attention else 0.)


@pytest.mark.parametrize('path', [p for p in ALL if p.endswith('_kd.py')])
def test_kd_sibling_has_the_same_models(path):
    kd = Config.fromfile(str(CONFIGS / path)).model
    dist = Config.fromfile(str(CONFIGS /
                               path.replace('_kd.py', '_dist.py'))).model
    for key in ('student', 'teacher', 'teacher_ckpt'):
        assert kd[key] == dist[key], key


# Normalisations that differ between student and teacher; the teacher's
# input then goes through one affine map, so logits agree to rounding.
CAFFE_DET = dict(
    type='DetDataPreprocessor',
    mean=[103.530, 116.280, 123.675],
    std=[1.0, 1.0, 1.0],
    bgr_to_rgb=False,
    pad_size_divisor=32)
RAW_BGR_CLS = dict(type='ClsDataPreprocessor', num_classes=100, to_rgb=False)
CAFFE_SEG = dict(
    type='SegDataPreProcessor',
    mean=[103.53, 116.28, 123.675],
    std=[1., 1., 1.],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size=(64, 128))


@pytest.mark.parametrize('path,teacher_pp', [
    ('mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py', CAFFE_DET),
    ('mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py', RAW_BGR_CLS),
    ('mmseg/deeplabv3_r101-d8_to_pspnet_r18-d8_4xb2-80k_cityscapes-'
     '512x1024_dist.py', CAFFE_SEG),
])
def test_teacher_with_another_normalisation(path, teacher_pp, tmp_path):
    distiller = check_pair(
        path, tmp_path, teacher_preprocessor=teacher_pp, tolerance=2e-4)
    assert distiller.renormalise.needed


def test_student_without_normalisation_teacher_with(tmp_path):
    """A student that takes raw BGR pixels, a teacher that normalises RGB."""
    distiller = check_pair(
        'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py',
        tmp_path,
        student_preprocessor=dict(type='ClsDataPreprocessor', to_rgb=False),
        tolerance=2e-4)
    assert distiller.renormalise.needed


@pytest.mark.parametrize('path', [
    'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py',
    'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py'
])
def test_classifiers_normalise_as_their_configs_declare(path):
    """MMPretrain keeps the normalisation at the top level of its configs;
    both models of the distiller must still use it."""
    cfg = load_offline(path)
    declared = cfg.data_preprocessor
    distiller = build_model(cfg)
    for model in (distiller.student, distiller.teacher):
        pp = model.data_preprocessor
        assert pp._enable_normalize
        assert pp.mean.flatten().tolist() == pytest.approx(declared.mean)
        assert pp.std.flatten().tolist() == pytest.approx(declared.std)
        assert pp.to_rgb == declared.get('to_rgb', False)
    assert not distiller.renormalise.needed
