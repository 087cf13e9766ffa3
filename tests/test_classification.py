"""Classification distillation: shipped MMPretrain configs."""
import pytest
import torch

from helpers import build, cls_batch, load_offline, shipped_configs, train_step

CLS_CONFIGS = shipped_configs('mmpretrain')


def test_all_pairs_shipped():
    assert len(CLS_CONFIGS) >= 8
    assert any('cifar100' in p for p in CLS_CONFIGS)
    for path in CLS_CONFIGS:
        if path.endswith('_dist.py'):
            assert path.replace('_dist.py', '_kd.py') in CLS_CONFIGS


@pytest.mark.parametrize('path', CLS_CONFIGS)
def test_config_takes_a_training_step(path):
    cfg = load_offline(path)
    model = build(cfg)
    num_classes = cfg.model.student.head.num_classes
    size = 32 if 'cifar' in path else 64
    log_vars = train_step(model, cls_batch(num_classes, size=size))
    kind = 'dist' if path.endswith('_dist.py') else 'kd'
    loss = log_vars[f'loss_{kind}']
    assert torch.isfinite(loss) and float(loss) > 0
    assert 'loss' in log_vars and torch.isfinite(log_vars['loss'])
    # The logged total is the total: MMPretrain's head returns its own
    # loss as 'loss', which the distiller renames so it cannot overwrite it.
    # (loss_dist.inter / .intra are logged parts of loss_dist, not added.)
    parts = sum(
        float(v) for k, v in log_vars.items()
        if k.startswith('loss_') and '.' not in k)
    assert float(log_vars['loss']) == pytest.approx(parts, rel=1e-5)
    assert float(log_vars['loss_cls']) > 0


def test_batch_of_one_is_finite():
    model = build(load_offline(CLS_CONFIGS[0]))
    model.eval()  # BatchNorm cannot train on a single image
    data = model.data_preprocessor(cls_batch(1000, batch=1), True)
    losses = model.loss(**data)
    assert torch.isfinite(losses['loss_dist'])
