"""Distiller pieces that every task shares."""
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor

from helpers import build, det_batch, load_offline, train_step
from mmdist.distillers import InputRenormaliser

PYTORCH_STYLE = dict(
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=32)
CAFFE_STYLE = dict(
    mean=[103.530, 116.280, 123.675],
    std=[1.0, 1.0, 1.0],
    bgr_to_rgb=False,
    pad_size_divisor=32)


def test_teacher_gets_its_own_normalisation():
    student = DetDataPreprocessor(**PYTORCH_STYLE)
    teacher = DetDataPreprocessor(**CAFFE_STYLE)
    batch = det_batch(size=(60, 90), batch=2)
    student_in = student(batch, False)
    teacher_in = teacher(batch, False)
    renorm = InputRenormaliser(student, teacher)
    assert renorm.needed
    mapped = renorm(student_in['inputs'], student_in['data_samples'])
    assert torch.allclose(mapped, teacher_in['inputs'], atol=1e-3)


def test_same_normalisation_passes_the_batch_through():
    student = DetDataPreprocessor(**PYTORCH_STYLE)
    renorm = InputRenormaliser(student, DetDataPreprocessor(**PYTORCH_STYLE))
    inputs = torch.randn(1, 3, 32, 32)
    assert not renorm.needed and renorm(inputs) is inputs


def test_caffe_teacher_in_a_real_step():
    cfg = load_offline('mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py')
    cfg.model.teacher = 'mmdet::retinanet/retinanet_r50-caffe_fpn_1x_coco.py'
    model = build(cfg)
    assert model.renormalise.needed
    assert torch.isfinite(train_step(model, det_batch())['loss_dist'])


def test_teacher_from_a_relative_config_path(monkeypatch, tmp_path):
    (tmp_path / 'teacher.py'
     ).write_text("_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_offline('mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py')
    cfg.model.teacher = 'teacher.py'
    model = build(cfg)
    assert model.teacher.backbone.depth == 18
    assert torch.isfinite(train_step(model, det_batch())['loss_dist'])


def test_teacher_from_an_mmdist_config_path():
    cfg = load_offline(
        'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py')
    cfg.model.teacher = 'mmdist::mmpretrain/resnet18_1xb64_cifar100.py'
    model = build(cfg)
    assert model.teacher.backbone.depth == 18


def test_hooks_keep_nothing_between_steps():
    cfg = load_offline('mmdet/atss_r101_to_r50_fpn_1x_coco_dist.py')
    model = build(cfg)
    train_step(model, det_batch())
    assert all(not r.records and not r.active for r in model.recorders)
    # Also when a step fails half-way.
    model.terms[0].loss.forward = lambda *a, **k: 1 / 0
    try:
        train_step(model, det_batch())
    except ZeroDivisionError:
        pass
    assert all(not r.records and not r.active for r in model.recorders)


# ------------------------------------------------- teacher sanity check
class _Logged:
    """Collect what mmdist prints to the current MMEngine logger."""

    def __init__(self):
        import logging

        from mmengine.logging import MMLogger
        self.lines = []
        self.logger = MMLogger.get_current_instance()
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage(
        ))
        self.logger.addHandler(self.handler)

    def close(self):
        self.logger.removeHandler(self.handler)
        return '\n'.join(self.lines)


def _teacher_answering(model, labels_of_batch):
    """Make the classifier teacher's fc answer ``labels_of_batch()``."""

    def answer(module, args, out):
        return torch.nn.functional.one_hot(labels_of_batch(),
                                           out.shape[1]).float() * 10

    model.teacher.head.fc.register_forward_hook(answer, prepend=True)


def _cls_model(iters):
    cfg = load_offline(
        'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py')
    cfg.model.teacher_check_iters = iters
    return build(cfg)


def test_teacher_accuracy_is_logged_for_the_first_steps():
    from helpers import cls_batch
    model = _cls_model(iters=3)
    batch = cls_batch(100, size=32, batch=8)
    labels = torch.tensor([int(s.gt_label) for s in batch['data_samples']])
    _teacher_answering(model, lambda: labels)
    logged = _Logged()
    accuracies = [
        train_step(model, batch).get('teacher_acc') for _ in range(4)
    ]
    text = logged.close()
    assert [float(a) for a in accuracies[:3]] == [100.0, 100.0, 100.0]
    assert accuracies[3] is None  # logged for the first 3 steps only
    assert 'teacher accuracy on the first 3 training batches: 100.0%' in text
    assert 'no better than chance' not in text


def test_blind_teacher_is_reported():
    from helpers import cls_batch
    model = _cls_model(iters=2)
    batch = cls_batch(100, size=32, batch=8)
    labels = torch.tensor([int(s.gt_label) for s in batch['data_samples']])
    _teacher_answering(model, lambda: (labels + 1) % 100)  # always wrong
    logged = _Logged()
    for _ in range(2):
        assert float(train_step(model, batch)['teacher_acc']) == 0.0
    text = logged.close()
    assert 'no better than chance' in text and 'data_preprocessor' in text


def test_segmentation_accuracy_ignores_ignored_pixels():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from mmdist.distillers.teacher_check import batch_accuracy
    labels = torch.tensor([[[0, 1], [255, 255]]])
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=labels)
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = 1  # predicts class 0 everywhere
    accuracy, baseline = batch_accuracy(logits, [sample], ignore_index=255)
    assert accuracy == 0.5 and baseline == 0.5


def test_detection_is_not_checked():
    from mmdist.distillers.teacher_check import batch_accuracy
    batch = det_batch()
    assert batch_accuracy(torch.randn(2, 720, 4, 4),
                          batch['data_samples']) is None


def test_predict_with_teacher_runs_the_renormalised_teacher():
    from helpers import cls_batch
    cfg = load_offline(
        'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py')
    cfg.model.predict_with = 'teacher'
    model = build(cfg).eval()
    batch = cls_batch(100, size=32, batch=2)
    with torch.no_grad():
        ours = model.test_step(batch)
        data = model.data_preprocessor(batch)
        theirs = model.teacher(
            model.renormalise(data['inputs']),
            data['data_samples'],
            mode='predict')
    for a, b in zip(ours, theirs):
        assert torch.equal(a.pred_score, b.pred_score)


def test_project_recipe_resolves_from_any_directory(monkeypatch, tmp_path):
    """The own-project recipe (docs/en/user_guides/detection.md):
    teacher='./my_retinanet_x101.py' next to the config, the tools run from
    elsewhere; the saved config copy must resolve too."""
    from mmengine.config import Config

    from mmdist.testing import strip_pretrained
    from mmdist.utils import build_model, resolve_teacher_paths
    project = tmp_path / 'my_project' / 'configs'
    project.mkdir(parents=True)
    (project / 'my_retinanet_r50.py'
     ).write_text("_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n")
    (project / 'my_retinanet_x101.py').write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'\n"
        "model = dict(backbone=dict(depth=34))\n")
    (project / 'my_retinanet_dist.py').write_text('''
_base_ = './my_retinanet_r50.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)
model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='./my_retinanet_x101.py',
    distill_terms=[
        dict(student_module='bbox_head.retina_cls',
             teacher_module='bbox_head.retina_cls',
             loss=dict(type='mmdist.DISTLoss', activation='sigmoid')),
    ])
''')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = '../my_project/configs/my_retinanet_dist.py'
    cfg = Config.fromfile(config)
    resolve_teacher_paths(cfg, config)
    strip_pretrained(cfg.model)
    assert build_model(cfg).teacher.backbone.depth == 34
    # The copy the Runner saves in the work dir resolves on its own.
    saved = elsewhere / 'work_dir_copy.py'
    cfg.dump(str(saved))
    copy_cfg = Config.fromfile(str(saved))
    strip_pretrained(copy_cfg.model)
    assert build_model(copy_cfg).teacher.backbone.depth == 34


def test_relative_teacher_ckpt_resolves_like_the_teacher(
        tmp_path, monkeypatch):
    """A relative ``teacher_ckpt`` resolves from the config's folder first,
    then from the working directory; URLs and missing files stay as they
    are (building the teacher then names the missing file)."""
    from mmengine.config import Config

    from mmdist.utils import resolve_teacher_paths
    folder = tmp_path / 'configs'
    folder.mkdir()
    (folder / 'teacher.pth').write_bytes(b'')
    (tmp_path / 'cwd.pth').write_bytes(b'')
    config = str(folder / 'dist.py')

    def resolved(teacher_ckpt):
        cfg = Config(
            dict(
                model=dict(type='mmdist.Distiller',
                           teacher_ckpt=teacher_ckpt)))
        resolve_teacher_paths(cfg, config)
        return cfg.model.teacher_ckpt

    monkeypatch.chdir(tmp_path)
    assert resolved('teacher.pth') == str(folder / 'teacher.pth')
    assert resolved('cwd.pth') == str(tmp_path / 'cwd.pth')
    assert resolved('absent.pth') == 'absent.pth'
    url = 'https://download.openmmlab.com/x.pth'
    assert resolved(url) == url and resolved(None) is None


def test_missing_relative_teacher_suggests_file_dirname(tmp_path):
    import pytest
    cfg = load_offline('mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py')
    cfg.model.teacher = './no_such_teacher.py'
    with pytest.raises(FileNotFoundError, match='fileDirname'):
        build(cfg)
