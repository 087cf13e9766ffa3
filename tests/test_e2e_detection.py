"""End to end on a generated COCO-layout data set, through tools/."""
import copy
import random

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint, save_checkpoint

from helpers import CONFIGS, run_tool
from mmdist.testing import SHAPES, make_coco_detection, strip_pretrained

RETINA = 'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'


def tiny_detection_config(tmp_path, max_epochs=2):
    """The shipped RetinaNet config on generated COCO data: 5 classes, small
    images, an R18 teacher saved to a real checkpoint first."""
    root = tmp_path / 'coco'
    make_coco_detection(str(root), num_train=8, num_val=4, size=(128, 96))
    cfg = Config.fromfile(str(CONFIGS / RETINA))
    strip_pretrained(cfg.model)
    cfg.model.student.bbox_head.num_classes = len(SHAPES)
    # A few iterations leave every score under the default 0.05 threshold;
    # keep the detections so CocoMetric has something to score.
    cfg.model.student.test_cfg.score_thr = 0.0
    teacher = copy.deepcopy(cfg.model.student)
    teacher.backbone.depth = 18
    teacher.neck.in_channels = [64, 128, 256, 512]
    init_default_scope('mmdet')
    teacher_ckpt = tmp_path / 'teacher.pth'
    save_checkpoint(MODELS.build(teacher).state_dict(), str(teacher_ckpt))
    cfg.model.teacher = teacher
    cfg.model.teacher_ckpt = str(teacher_ckpt)

    scale = (128, 96)
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                       'scale_factor'))
    ]
    metainfo = dict(classes=SHAPES)
    for split, pipeline in (('train', train_pipeline), ('val', test_pipeline),
                            ('test', test_pipeline)):
        loader = cfg[f'{split}_dataloader']
        loader.batch_size = 2
        loader.num_workers = 0
        loader.persistent_workers = False
        ds = loader.dataset
        ds.data_root = str(root) + '/'
        ds.metainfo = metainfo
        folder = 'train2017' if split == 'train' else 'val2017'
        ds.ann_file = f'annotations/instances_{folder}.json'
        ds.data_prefix = dict(img=f'{folder}/')
        ds.pipeline = pipeline
    for split in ('val', 'test'):
        cfg[f'{split}_evaluator'].ann_file = str(root / 'annotations' /
                                                 'instances_val2017.json')
    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0)]
    # Randomly initialised backbones: train their BatchNorm (the configs
    # freeze it for ImageNet-pretrained weights) and clip gradients.
    cfg.model.student.backbone.norm_eval = False
    cfg.optim_wrapper.optimizer.lr = 0.002
    cfg.optim_wrapper.clip_grad = dict(max_norm=10, norm_type=2)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.randomness = dict(seed=0)
    path = tmp_path / 'tiny_retinanet_dist.py'
    cfg.dump(str(path))
    return path


@pytest.mark.heavy
def test_train_test_resume_export(tmp_path):
    config = tiny_detection_config(tmp_path)
    work = tmp_path / 'work'
    out = run_tool('train.py', config, '--work-dir', work)
    log = out.stdout + out.stderr
    assert 'loss_dist' in log and 'loss_dist.inter' in log
    assert (work / 'epoch_2.pth').is_file()

    tested = run_tool('test.py', config, work / 'epoch_2.pth', '--work-dir',
                      tmp_path / 'test')
    assert 'coco/bbox_mAP' in tested.stdout + tested.stderr

    resumed = run_tool('train.py', config, '--work-dir', work, '--resume',
                       '--cfg-options', 'train_cfg.max_epochs=3')
    assert 'resumed epoch: 2' in resumed.stdout + resumed.stderr
    ckpt = work / 'epoch_3.pth'
    state = torch.load(ckpt, weights_only=True)['state_dict']
    assert not any(k.startswith('teacher') for k in state)

    exported = tmp_path / 'student.pth'
    run_tool('model_converters/export_student.py', ckpt, exported)
    cfg = Config.fromfile(str(config))
    init_default_scope('mmdet')
    student = MODELS.build(cfg.model.student)
    # strict=True raises on any missing or unexpected key.
    load_checkpoint(student, str(exported), map_location='cpu', strict=True)
    expected = {k[len('student.'):]: v for k, v in state.items()}
    for key, value in student.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.heavy
def test_dist_train_two_cpu_processes(tmp_path):
    config = tiny_detection_config(tmp_path, max_epochs=1)
    work = tmp_path / 'work'
    port = str(random.randint(20000, 40000))
    out = run_tool(
        'dist_train.sh',
        config,
        2,
        '--work-dir',
        work,
        env=dict(PORT=port, OMP_NUM_THREADS='1'))
    log = out.stdout + out.stderr
    assert 'loss_dist' in log
    assert (work / 'epoch_1.pth').is_file()
    tested = run_tool('test.py', config, work / 'epoch_1.pth', '--work-dir',
                      tmp_path / 'test')
    assert 'coco/bbox_mAP' in tested.stdout + tested.stderr
