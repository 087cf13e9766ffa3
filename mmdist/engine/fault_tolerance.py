"""Switch a training config to mmdist's crash-safe checkpointing, SIGTERM
handling, mid-epoch resume and divergence guard (what ``tools/train.py``
does by default)."""
from mmengine.config import Config

_STOCK_CHECKPOINT = ('CheckpointHook', 'mmengine.CheckpointHook')
_STOCK_EPOCH_LOOP = ('EpochBasedTrainLoop', 'mmengine.EpochBasedTrainLoop')
_PREEMPTION = ('mmdist.PreemptionHook', 'PreemptionHook')
_GUARD = ('mmdist.DivergenceGuardHook', 'DivergenceGuardHook')


def enable_fault_tolerance(cfg: Config) -> None:
    """Make a kill at any moment lose at most the work since the last
    complete checkpoint, and a diverged run stop without overwriting it.

    In place, and only where the config uses MMEngine's stock parts (a
    custom checkpoint hook or loop is left alone):

    - ``default_hooks.checkpoint`` of type ``CheckpointHook`` becomes
      ``mmdist.SafeCheckpointHook`` with the same arguments (added with
      MMEngine's default ``interval=1`` when absent; ``None`` stays off);
    - ``mmdist.PreemptionHook`` joins ``custom_hooks`` when the checkpoint
      hook is mmdist's;
    - ``mmdist.DivergenceGuardHook`` joins ``custom_hooks`` unless the
      config lists one (with its own ``max_nonfinite_iters``);
    - an epoch-based ``train_cfg`` (``type='EpochBasedTrainLoop'`` or
      ``by_epoch=True``) becomes ``mmdist.ResumableEpochBasedTrainLoop``.

    Args:
        cfg (Config): The training config.
    """
    default_hooks = cfg.setdefault('default_hooks', {})
    if 'checkpoint' not in default_hooks:
        default_hooks['checkpoint'] = dict(type='CheckpointHook', interval=1)
    checkpoint = default_hooks['checkpoint']
    if checkpoint is not None and checkpoint.get('type') in _STOCK_CHECKPOINT:
        checkpoint['type'] = 'mmdist.SafeCheckpointHook'
    custom_hooks = list(cfg.get('custom_hooks') or [])
    if checkpoint is not None and checkpoint.get('type') in (
            'mmdist.SafeCheckpointHook', 'SafeCheckpointHook'):
        if not any(h.get('type') in _PREEMPTION for h in custom_hooks):
            custom_hooks.append(dict(type='mmdist.PreemptionHook'))
    if not any(h.get('type') in _GUARD for h in custom_hooks):
        custom_hooks.append(dict(type='mmdist.DivergenceGuardHook'))
    cfg.custom_hooks = custom_hooks

    train_cfg = cfg.get('train_cfg')
    if train_cfg is None:
        return
    if train_cfg.get('type') in _STOCK_EPOCH_LOOP:
        train_cfg['type'] = 'mmdist.ResumableEpochBasedTrainLoop'
    elif 'type' not in train_cfg and train_cfg.get('by_epoch', False):
        train_cfg.pop('by_epoch')
        train_cfg['type'] = 'mmdist.ResumableEpochBasedTrainLoop'
