"""DIST + feature mimicking: feature terms, trainable connectors, one teacher
pass for mixed terms, checkpoints and DDP."""
import copy
import random

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint

from helpers import (CONFIGS, build, det_batch, load_offline, run_tool,
                     train_step)
from mmdist.losses import FeatureMSELoss

RETINA_MIMIC = 'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist_mimic.py'
FASTER_MIMIC = ('mmdet/cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_'
                '2x_coco_dist_mimic.py')


def small_retina_mimic():
    """The shipped RetinaNet mimic pair with an R18 teacher (fast)."""
    cfg = load_offline(RETINA_MIMIC)
    teacher = copy.deepcopy(cfg.model.student)
    teacher.backbone.depth = 18
    teacher.neck.in_channels = [64, 128, 256, 512]
    cfg.model.teacher = teacher
    return cfg


def connector(model):
    return model.terms[1].connector


# ----------------------------------------------------------------- the loss
def test_feature_loss_is_the_plain_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    loss = FeatureMSELoss(loss_weight=0.5)(s, t)
    assert torch.allclose(loss, 0.5 * ((s - t)**2).mean())
    half = FeatureMSELoss()(s.half(), t.half())
    assert half.dtype == torch.float32
    assert torch.allclose(half,
                          ((s.half().float() - t.half().float())**2).mean())
    with pytest.raises(ValueError, match='FeatureMSELoss loss_weight'):
        FeatureMSELoss(loss_weight=-1.)
    with pytest.raises(ValueError, match="got 'heavy'"):
        FeatureMSELoss(loss_weight='heavy')
    with pytest.raises(ValueError, match=r'\(2, 4, 3, 5\).*\(2, 4, 3, 4\)'):
        FeatureMSELoss()(s, t[..., :4])


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize(
    'path',
    [RETINA_MIMIC,
     pytest.param(FASTER_MIMIC, marks=pytest.mark.heavy)])
def test_mimic_config_builds_and_steps(path):
    cfg = load_offline(path)
    dist = load_offline(path.replace('_dist_mimic', '_dist'))
    for key in ('student', 'teacher', 'teacher_ckpt'):
        assert cfg.model[key] == dist.model[key], key
    assert cfg.model.distill_terms[0] == dist.model.distill_terms[0]
    model = build(cfg)
    assert connector(model).num_levels == 5
    log_vars = train_step(model, det_batch())
    for key in ('loss_dist', 'loss_mimic'):
        assert torch.isfinite(log_vars[key]) and float(log_vars[key]) > 0


def test_connector_trains_teacher_does_not():
    model = build(small_retina_mimic())
    names = {n for n, _ in model.named_parameters()}
    assert 'terms.1.connector.convs.4.weight' in names
    assert not any(n.startswith('teacher') for n in names)
    before = copy.deepcopy(connector(model).state_dict())
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    train_step(model, det_batch())
    after = connector(model).state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


def test_connectors_are_in_training_state_but_not_the_student():
    model = build(small_retina_mimic())
    state = model.state_dict()
    assert 'terms.1.connector.convs.0.bias' in state
    fresh = build(small_retina_mimic())
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(
        connector(fresh).convs[3].weight,
        connector(model).convs[3].weight)
    assert not any('connector' in k for k in model.student.state_dict())


def test_one_teacher_pass_for_roi_and_neck_terms():
    """RoI box-classifier and neck terms together: the teacher's backbone
    runs once per step, and no RPN."""
    cfg = load_offline(FASTER_MIMIC)
    teacher = copy.deepcopy(cfg.model.student)
    teacher.backbone.depth = 18
    teacher.neck.in_channels = [64, 128, 256, 512]
    cfg.model.teacher = teacher
    model = build(cfg)
    calls = []
    model.teacher.backbone.register_forward_hook(
        lambda *a: calls.append('backbone'))
    model.teacher.rpn_head.register_forward_hook(
        lambda *a: calls.append('rpn'))
    model.teacher.roi_head.bbox_head.register_forward_hook(
        lambda *a: calls.append('box head'))
    log_vars = train_step(model, det_batch())
    assert calls == ['backbone', 'box head']
    assert float(log_vars['loss_mimic']) > 0 and float(
        log_vars['loss_dist']) > 0


# ------------------------------------------------------------ bad pairs
def test_level_count_mismatch_names_both_modules():
    cfg = small_retina_mimic()
    cfg.model.teacher.neck.num_outs = 4
    cfg.model.teacher.bbox_head.anchor_generator.strides = [8, 16, 32, 64]
    cfg.model.distill_terms = cfg.model.distill_terms[1:]
    model = build(cfg)
    with pytest.raises(
            RuntimeError, match=r"student neck gave 5 .* teacher neck gave 4"):
        train_step(model, det_batch())


def test_channel_mismatch_names_both_modules():
    cfg = small_retina_mimic()
    cfg.model.teacher.neck.out_channels = 128
    cfg.model.teacher.bbox_head.in_channels = 128
    cfg.model.teacher.bbox_head.feat_channels = 128
    cfg.model.distill_terms = cfg.model.distill_terms[1:]
    model = build(cfg)
    with pytest.raises(
            ValueError,
            match=r'student neck gives .*256.* teacher neck '
            r'gives .*128'):
        train_step(model, det_batch())


def test_connector_channel_mismatch_names_the_channels():
    cfg = small_retina_mimic()
    cfg.model.distill_terms[1].connector.in_channels = 128
    model = build(cfg)
    with pytest.raises(
            ValueError,
            match=r'student neck gives 256 channels .* '
            r'connector takes 128'):
        train_step(model, det_batch())


def test_skipped_term_keeps_the_connector_in_the_graph():
    """A non-finite teacher feature skips the term; the connector still
    takes part in the graph (zero gradient), as DDP needs."""
    model = build(small_retina_mimic())
    model.teacher.neck.register_forward_hook(
        lambda m, i, out: tuple(o * float('nan') for o in out), prepend=True)
    model.train()
    data = model.data_preprocessor(det_batch(), True)
    losses = model(**data, mode='loss')
    assert float(losses['loss_mimic']) == 0
    losses['loss_mimic'].backward()
    grads = [p.grad for p in connector(model).parameters()]
    assert all(g is not None and not g.any() for g in grads)


# ------------------------------------------------------------ end to end
def mimic_detection_config(tmp_path, max_epochs):
    from test_e2e_detection import tiny_detection_config
    path = tiny_detection_config(tmp_path, max_epochs=max_epochs)
    cfg = Config.fromfile(str(path))
    mimic = Config.fromfile(str(CONFIGS / RETINA_MIMIC)).model
    cfg.model.distill_terms = mimic.distill_terms
    out = tmp_path / 'tiny_retinanet_dist_mimic.py'
    cfg.dump(str(out))
    return out


@pytest.mark.heavy
def test_mimic_train_resume_export(tmp_path):
    config = mimic_detection_config(tmp_path, max_epochs=1)
    work = tmp_path / 'work'
    out = run_tool('train.py', config, '--work-dir', work)
    assert 'loss_mimic' in out.stdout + out.stderr
    state = torch.load(work / 'epoch_1.pth', weights_only=False)['state_dict']
    assert 'terms.1.connector.convs.0.weight' in state

    resumed = run_tool('train.py', config, '--work-dir', work, '--resume',
                       '--cfg-options', 'train_cfg.max_epochs=2')
    assert 'resumed epoch: 1' in resumed.stdout + resumed.stderr
    final = torch.load(work / 'epoch_2.pth', weights_only=False)['state_dict']
    assert not torch.equal(final['terms.1.connector.convs.0.weight'],
                           state['terms.1.connector.convs.0.weight'])

    exported = tmp_path / 'student.pth'
    run_tool('model_converters/export_student.py', work / 'epoch_2.pth',
             exported)
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    student = MODELS.build(Config.fromfile(str(config)).model.student)
    load_checkpoint(student, str(exported), map_location='cpu', strict=True)


POISON = '''
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PoisonTeacherNeck(Hook):
    """Make the teacher's neck output NaN on rank 0 at even iterations."""

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        import torch.distributed as dist
        model = runner.model.module if hasattr(runner.model,
                                               'module') else runner.model
        if not hasattr(self, 'handle'):
            self.handle = None
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if dist.get_rank() == 0 and runner.iter % 2 == 0:
            self.handle = model.teacher.neck.register_forward_hook(
                lambda m, i, out: tuple(o * float('nan') for o in out),
                prepend=True)
'''


@pytest.mark.heavy
def test_two_processes_with_connectors_and_skipped_steps(tmp_path):
    config = mimic_detection_config(tmp_path, max_epochs=1)
    (tmp_path / 'poison_hook.py').write_text(POISON)
    cfg = Config.fromfile(str(config))
    cfg.custom_imports = dict(
        imports=['mmdist', 'poison_hook'], allow_failed_imports=False)
    cfg.custom_hooks = [dict(type='PoisonTeacherNeck')]
    cfg.dump(str(config))
    work = tmp_path / 'work'
    port = str(random.randint(20000, 40000))
    out = run_tool(
        'dist_train.sh',
        config,
        2,
        '--work-dir',
        work,
        env=dict(PORT=port, OMP_NUM_THREADS='1', PYTHONPATH=str(tmp_path)))
    log = out.stdout + out.stderr
    assert 'loss_mimic' in log and 'skipping' in log
    assert (work / 'epoch_1.pth').is_file()
