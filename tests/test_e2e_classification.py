"""End to end on generated ImageNet-style class folders, through tools/."""
import copy

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint, save_checkpoint

from helpers import CONFIGS, run_tool
from mmdist.testing import SHAPES, make_image_folders, strip_pretrained

R34_R18 = 'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py'


def tiny_classification_config(tmp_path):
    root = tmp_path / 'imagenet'
    make_image_folders(
        str(root), num_train_per_class=4, num_val_per_class=2, size=64)
    cfg = Config.fromfile(str(CONFIGS / R34_R18))
    strip_pretrained(cfg.model)
    cfg.model.student.head.num_classes = len(SHAPES)
    teacher = copy.deepcopy(cfg.model.student)
    teacher.backbone.depth = 34
    init_default_scope('mmpretrain')
    teacher_ckpt = tmp_path / 'teacher.pth'
    save_checkpoint(MODELS.build(teacher).state_dict(), str(teacher_ckpt))
    cfg.model.teacher = teacher
    cfg.model.teacher_ckpt = str(teacher_ckpt)
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='RandomResizedCrop', scale=64),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=72, edge='short'),
        dict(type='CenterCrop', crop_size=64),
        dict(type='PackInputs')
    ]
    for split, pipeline in (('train', train_pipeline), ('val', test_pipeline),
                            ('test', test_pipeline)):
        loader = cfg[f'{split}_dataloader']
        loader.batch_size = 4
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset = dict(
            type='CustomDataset',
            data_root=str(root),
            data_prefix='train' if split == 'train' else 'val',
            pipeline=pipeline)
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0)]
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    path = tmp_path / 'tiny_resnet_dist.py'
    cfg.dump(str(path))
    return path


@pytest.mark.heavy
def test_train_test_export(tmp_path):
    config = tiny_classification_config(tmp_path)
    work = tmp_path / 'work'
    out = run_tool('train.py', config, '--work-dir', work)
    assert 'loss_dist' in out.stdout + out.stderr
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    tested = run_tool('test.py', config, ckpt, '--work-dir', tmp_path / 'test')
    assert 'accuracy/top1' in tested.stdout + tested.stderr

    exported = tmp_path / 'student.pth'
    run_tool('model_converters/export_student.py', ckpt, exported)
    init_default_scope('mmpretrain')
    student = MODELS.build(Config.fromfile(str(config)).model.student)
    load_checkpoint(student, str(exported), map_location='cpu', strict=True)
