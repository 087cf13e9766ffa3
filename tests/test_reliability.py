"""What happens when things go wrong: bad teacher outputs, degenerate
batches, bad files and configs caught before training."""
import copy

import pytest
import torch

from helpers import (build, cls_batch, det_batch, load_offline, run_tool,
                     seg_batch, train_step)

RETINA = 'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'
FASTER = ('mmdet/cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_'
          'coco_dist.py')
DLV3 = ('mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-'
        '512x1024_dist.py')
R34 = 'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py'


def small_retina():
    """The shipped RetinaNet pair with an R18 teacher (fast to run)."""
    cfg = load_offline(RETINA)
    teacher = copy.deepcopy(cfg.model.student)
    teacher.backbone.depth = 18
    teacher.neck.in_channels = [64, 128, 256, 512]
    cfg.model.teacher = teacher
    return cfg


# ------------------------------------------------- non-finite teacher output
def test_nonfinite_teacher_output_never_reaches_the_student():
    cfg = small_retina()
    cfg.model.max_nonfinite_steps = 2
    model = build(cfg)
    poison = model.teacher.bbox_head.retina_cls.register_forward_hook(
        lambda m, i, out: out * float('inf'), prepend=True)
    for step in range(2):
        log_vars = train_step(model, det_batch())
        assert float(log_vars['loss_dist']) == 0.0
        assert torch.isfinite(log_vars['loss'])
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert model.terms[0].nonfinite_in_a_row == step + 1
    with pytest.raises(FloatingPointError, match='3 steps in a row'):
        train_step(model, det_batch())
    # A finite step resets the count.
    poison.remove()
    model.terms[0].nonfinite_in_a_row = 0
    log_vars = train_step(model, det_batch())
    assert float(log_vars['loss_dist']) > 0
    assert model.terms[0].nonfinite_total == 3


def small_pspnet_pair():
    """The shipped PSPNet pair (decode + auxiliary terms), R18 teacher."""
    cfg = load_offline(
        'mmseg/deeplabv3_r101-d8_to_pspnet_r18-d8_4xb2-80k_cityscapes-'
        '512x1024_dist.py')
    cfg.model.teacher = copy.deepcopy(cfg.model.student)
    return cfg


def test_nonfinite_guard_counts_each_term():
    """A healthy decode term must not reset the count of a broken
    auxiliary term: the run stops after max_nonfinite_steps."""
    cfg = small_pspnet_pair()
    cfg.model.max_nonfinite_steps = 2
    model = build(cfg)
    model.teacher.auxiliary_head.conv_seg.register_forward_hook(
        lambda m, i, out: out * float('nan'), prepend=True)
    for step in range(2):
        log_vars = train_step(model, seg_batch())
        assert float(log_vars['loss_dist']) > 0
        assert float(log_vars['loss_dist_aux']) == 0
        assert [t.nonfinite_in_a_row for t in model.terms] == [0, step + 1]
    with pytest.raises(
            FloatingPointError, match=r"3 steps in a row \(term 'dist_aux'\)"):
        train_step(model, seg_batch())


# ------------------------------------------------------ degenerate batches
def test_images_without_objects():
    model = build(small_retina())
    log_vars = train_step(model, det_batch(items=0))
    assert torch.isfinite(log_vars['loss']) and torch.isfinite(
        log_vars['loss_dist'])


def test_two_stage_without_gt_boxes_or_proposals():
    cfg = load_offline(FASTER)
    model = build(cfg)
    log_vars = train_step(model, det_batch(items=0))
    assert torch.isfinite(log_vars['loss'])
    assert torch.isfinite(log_vars['loss_dist'])


def test_all_pixels_ignored():
    cfg = load_offline(DLV3)
    cfg.model.student.data_preprocessor.size = (64, 128)
    for term in cfg.model.distill_terms:
        term.ignore_index = 255
    model = build(cfg)
    batch = seg_batch()
    for sample in batch['data_samples']:
        sample.gt_sem_seg.data[:] = 255
    log_vars = train_step(model, batch)
    assert float(log_vars['loss_dist']) == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_batch_of_one_trains():
    cfg = small_retina()
    log_vars = train_step(build(cfg), det_batch(batch=1))
    assert torch.isfinite(log_vars['loss_dist'])


# --------------------------------------------- config and file errors early
def test_truncated_teacher_checkpoint_names_the_file(tmp_path):
    cfg = load_offline(R34)
    good = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict={'w': torch.zeros(1000)}), good)
    bad = tmp_path / 'teacher_truncated.pth'
    bad.write_bytes(good.read_bytes()[:300])
    cfg.model.teacher_ckpt = str(bad)
    with pytest.raises(RuntimeError, match='teacher_truncated.pth'):
        build(cfg)


def test_teacher_checkpoint_with_unsafe_global_is_refused(tmp_path):
    import os

    class Payload:

        def __reduce__(self):
            return (os.system, (f'touch {tmp_path}/pwned', ))

    cfg = load_offline(R34)
    path = tmp_path / 'evil_teacher.pth'
    torch.save(dict(state_dict={}, meta=Payload()), path)
    cfg.model.teacher_ckpt = str(path)
    with pytest.raises(Exception, match='evil_teacher.pth'):
        build(cfg)
    assert not (tmp_path / 'pwned').exists()


def test_teacher_checkpoint_of_another_model_is_refused(tmp_path):
    from mmengine.runner import save_checkpoint
    cfg = load_offline(R34)
    student = build(cfg).student
    path = tmp_path / 'wrong_teacher.pth'
    save_checkpoint(student.state_dict(), str(path))  # ResNet-18 weights
    cfg.model.teacher_ckpt = str(path)  # for the ResNet-34 teacher
    with pytest.raises(RuntimeError, match='missing keys|size mismatch'):
        build(cfg)


def test_unwritable_work_dir_fails_before_training(tmp_path):
    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('a file where the work_dir should go')
    with pytest.raises(AssertionError, match='not writable'):
        run_tool('train.py', 'configs/' + R34, '--work-dir', blocker / 'work')


def test_classifier_step_with_batch_statistics_of_two():
    model = build(load_offline(R34))
    log_vars = train_step(model, cls_batch(1000, batch=2))
    assert torch.isfinite(log_vars['loss_dist'])


def test_amp_on_a_cpu_fails_before_building_anything(tmp_path):
    with pytest.raises(
            AssertionError,
            match='AmpOptimizerWrapper is only available '
            'training on gpu'):
        run_tool(
            'train.py',
            'configs/demo/det_student_dist.py',
            '--amp',
            '--work-dir',
            tmp_path / 'work',
            timeout=120)
    assert not list((tmp_path / 'work').glob('*/*.log'))
