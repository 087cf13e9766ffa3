"""What a distillation run tells its user in the log: terms that cannot
teach, heads the short form leaves out, parts that add up under MMEngine's
default log processor, the teacher's accuracy in its neighbours' unit."""
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.runner import LogProcessor

from helpers import (build, cls_batch, det_batch, load_offline, seg_batch,
                     train_step)
from test_distiller import _Logged
from test_expand import _distiller

RESNET18 = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
DEIT = 'mmpretrain::deit/deit-tiny-distilled_4xb256_in1k.py'


@pytest.fixture(scope='module')
def deit_to_resnet18():
    """A ResNet-18 student distilled, in the short form, from a distilled
    DeiT teacher built by ``init_weights()`` (its heads start at zero),
    with the build's log."""
    logged = _Logged()
    model = _distiller(RESNET18, DEIT, None)
    model.student.init_weights()
    return model, logged.close()


def test_unpaired_deit_distillation_head_is_said_to_be_left_out(
        deit_to_resnet18):
    model, build_log = deit_to_resnet18
    assert [(t.student_module, t.teacher_module)
            for t in model.terms] == [('head.fc', 'head.layers.head')]
    assert ('distill terms: teacher head.layers.head_dist (DeiT) left out: '
            "the student's Linear head has no logits module to pair it with"
            in build_log)


def test_constant_teacher_output_is_named_once(deit_to_resnet18):
    model, _ = deit_to_resnet18
    (term, ) = model.terms
    term.teacher_checked = False
    logged = _Logged()
    losses = [
        train_step(model, cls_batch(1000, size=64, seed=s)) for s in range(2)
    ]
    text = logged.close()
    assert all(float(out['loss_dist']) == 2.0 for out in losses)
    warnings = [line for line in text.splitlines() if 'constant' in line]
    assert len(warnings) == 1, text  # once per term, not every step
    assert ("distillation term 'dist': teacher head.layers.head gives a "
            'constant output (std 0 around 0)' in warnings[0])
    assert 'cannot move the student' in warnings[0]
    assert 'teacher_ckpt' in warnings[0]


def test_varying_teacher_output_gives_no_warning(deit_to_resnet18):
    model, _ = deit_to_resnet18
    (term, ) = model.terms
    term.teacher_checked = False
    head = model.teacher.head.layers.head
    saved = head.weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.weight.normal_(0, 0.02, generator=generator)
    logged = _Logged()
    try:
        loss = train_step(model, cls_batch(1000, size=64))['loss_dist']
    finally:
        with torch.no_grad():
            head.weight.copy_(saved)
    assert float(loss) != 2.0  # the term now sees a pattern to follow
    assert 'constant output' not in logged.close()


def _logged_line(log_vars_per_step) -> dict:
    """The values of MMEngine's default ``LogProcessor`` (nothing set, as
    in a config of one's own) after these steps, read back from its line."""
    hub = MessageHub.get_instance('test_distill_log_parts')
    for step, log_vars in enumerate(log_vars_per_step):
        for key, value in log_vars.items():
            # What RuntimeInfoHook.after_train_iter does with the outputs.
            hub.update_scalar(f'train/{key}', float(value))
    runner = SimpleNamespace(
        message_hub=hub,
        iter=step,
        max_iters=len(log_vars_per_step),
        _train_loop=None)
    _, line = LogProcessor(by_epoch=False).get_log_after_iter(
        runner, step, 'train')
    return {k: float(v) for k, v in re.findall(r'(\S+): (\S+)', line)}


def test_logged_parts_add_up_under_the_default_log_processor():
    cfg = load_offline('demo/det_student_dist.py')
    cfg.model.teacher_ckpt = None
    cfg.model.teacher_precision = 'float32'
    model = build(cfg)
    steps = []
    for seed in range(3):
        torch.manual_seed(seed)
        steps.append(
            train_step(model,
                       det_batch(num_classes=5, size=(96, 96),
                                 items=1 + seed)))
    # The steps differ: a part logged as its latest value would not add up
    # to a loss smoothed over the window.
    assert len({round(float(s['loss_dist']), 4) for s in steps}) == 3
    line = _logged_line(steps)
    # Found by their ends, so that parts of any name are held to it.
    inter, intra = (
        next(v for k, v in line.items()
             if k.startswith(('dist', 'loss_dist')) and k.endswith(end))
        for end in ('inter', 'intra'))
    assert inter + intra == pytest.approx(line['loss_dist'], abs=2e-4), line
    own = [k for k in line if k.startswith('loss_') and '.' not in k]
    assert sum(line[k] for k in own) == pytest.approx(
        line['loss'], abs=1e-3), line
    # The total backpropagates the parts once (inside loss_dist).
    assert float(steps[-1]['loss']) == pytest.approx(
        sum(float(steps[-1][k]) for k in own), rel=1e-6)
    # Hence no config needs a log_processor line for them.
    assert 'mean_pattern' not in cfg.log_processor


def test_teacher_accuracy_is_logged_in_percent_like_acc_seg():
    cfg = load_offline('demo/seg_student_dist.py')
    cfg.model.teacher_ckpt = None
    cfg.model.teacher_precision = 'float32'
    model = build(cfg)
    batch = seg_batch(num_classes=19, size=(64, 128))

    def answer(module, args, out):
        # A teacher that knows every label: 100 percent.
        labels = torch.stack(
            [s.gt_sem_seg.data for s in batch['data_samples']]).float()
        labels = F.interpolate(labels, size=out.shape[2:], mode='nearest')
        return F.one_hot(labels[:, 0].long().clamp(max=18), 19).permute(
            0, 3, 1, 2).float() * 10

    model.teacher.decode_head.conv_seg.register_forward_hook(
        answer, prepend=True)  # before the recorder reads it
    log_vars = train_step(model, batch)
    assert float(log_vars['teacher_acc']) == 100.0
    # Its neighbour, MMSeg's pixel accuracy, is in percent too.
    assert 'decode.acc_seg' in log_vars
