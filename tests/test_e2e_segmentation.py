"""End to end on a generated Cityscapes-layout data set, through tools/."""
import copy
import random

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint, save_checkpoint

from helpers import CONFIGS, run_tool
from mmdist.testing import make_cityscapes, strip_pretrained

DLV3 = ('mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-'
        '512x1024_dist.py')


def tiny_segmentation_config(tmp_path, max_iters=4):
    """The shipped DeepLabV3 config on generated Cityscapes data with small
    crops and an R18 teacher saved to a real checkpoint."""
    root = tmp_path / 'cityscapes'
    make_cityscapes(str(root), num_train=6, num_val=3, size=(128, 64))
    cfg = Config.fromfile(str(CONFIGS / DLV3))
    strip_pretrained(cfg.model)
    size = (64, 128)
    cfg.model.student.data_preprocessor.size = size
    teacher = copy.deepcopy(cfg.model.student)
    init_default_scope('mmseg')
    teacher_ckpt = tmp_path / 'teacher.pth'
    save_checkpoint(MODELS.build(teacher).state_dict(), str(teacher_ckpt))
    cfg.model.teacher = teacher
    cfg.model.teacher_ckpt = str(teacher_ckpt)

    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    for split, pipeline in (('train', train_pipeline), ('val', test_pipeline),
                            ('test', test_pipeline)):
        loader = cfg[f'{split}_dataloader']
        loader.batch_size = 2 if split == 'train' else 1
        loader.num_workers = 0
        loader.persistent_workers = False
        ds = loader.dataset
        ds.data_root = str(root)
        folder = 'train' if split == 'train' else 'val'
        ds.data_prefix = dict(
            img_path=f'leftImg8bit/{folder}', seg_map_path=f'gtFine/{folder}')
        ds.pipeline = pipeline
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=max_iters, by_epoch=False)
    cfg.randomness = dict(seed=0)
    path = tmp_path / 'tiny_deeplabv3_dist.py'
    cfg.dump(str(path))
    return path


@pytest.mark.heavy
def test_train_test_export(tmp_path):
    config = tiny_segmentation_config(tmp_path)
    work = tmp_path / 'work'
    out = run_tool('train.py', config, '--work-dir', work)
    log = out.stdout + out.stderr
    assert 'loss_dist' in log and 'loss_dist_aux' in log
    assert 'decode.loss_ce' in log
    ckpt = work / 'iter_4.pth'
    assert ckpt.is_file()

    tested = run_tool('test.py', config, ckpt, '--work-dir', tmp_path / 'test')
    assert 'mIoU' in tested.stdout + tested.stderr

    exported = tmp_path / 'student.pth'
    run_tool('model_converters/export_student.py', ckpt, exported)
    init_default_scope('mmseg')
    student = MODELS.build(Config.fromfile(str(config)).model.student)
    load_checkpoint(student, str(exported), map_location='cpu', strict=True)


@pytest.mark.heavy
def test_dist_train_two_cpu_processes(tmp_path):
    config = tiny_segmentation_config(tmp_path, max_iters=2)
    work = tmp_path / 'work'
    port = str(random.randint(20000, 40000))
    out = run_tool(
        'dist_train.sh',
        config,
        2,
        '--work-dir',
        work,
        env=dict(PORT=port, OMP_NUM_THREADS='1'))
    assert 'loss_dist' in out.stdout + out.stderr
    assert (work / 'iter_2.pth').is_file()
    state = torch.load(work / 'iter_2.pth', weights_only=True)['state_dict']
    assert not any(k.startswith('teacher') for k in state)
