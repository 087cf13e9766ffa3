"""Switch a training config to mmdist's crash-safe checkpointing, SIGTERM
handling, mid-epoch resume and divergence guard (what ``tools/train.py``
does unless told not to)."""
from typing import List

from mmengine.config import Config

#: Top-level config key: ``fault_tolerance = False`` in a config (or
#: ``--cfg-options fault_tolerance=False``, or ``tools/train.py
#: --no-fault-tolerance``) leaves the config as written.
FAULT_TOLERANCE_KEY = 'fault_tolerance'

_STOCK_CHECKPOINT = ('CheckpointHook', 'mmengine.CheckpointHook')
_STOCK_EPOCH_LOOP = ('EpochBasedTrainLoop', 'mmengine.EpochBasedTrainLoop')
_PREEMPTION = ('mmdist.PreemptionHook', 'PreemptionHook')
_GUARD = ('mmdist.DivergenceGuardHook', 'DivergenceGuardHook')
_SAFE_CHECKPOINT = ('mmdist.SafeCheckpointHook', 'SafeCheckpointHook')
_RESUMABLE_LOOP = 'mmdist.ResumableEpochBasedTrainLoop'


def enable_fault_tolerance(cfg: Config) -> List[str]:
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

    A config with ``fault_tolerance = False`` (:data:`FAULT_TOLERANCE_KEY`)
    is left unchanged: the Runner then builds exactly the hooks and loop
    MMDetection's own ``tools/train.py`` builds for it. Calling this again
    changes nothing more.

    Args:
        cfg (Config): The training config.

    Returns:
        list[str]: One line per change made (what and why), for the log;
        empty when nothing changed.
    """
    if not cfg.get(FAULT_TOLERANCE_KEY, True):
        return []
    changes = []
    default_hooks = cfg.setdefault('default_hooks', {})
    if 'checkpoint' not in default_hooks:
        default_hooks['checkpoint'] = dict(type='CheckpointHook', interval=1)
    checkpoint = default_hooks['checkpoint']
    if checkpoint is not None and checkpoint.get('type') in _STOCK_CHECKPOINT:
        checkpoint['type'] = 'mmdist.SafeCheckpointHook'
        changes.append(
            'default_hooks.checkpoint: CheckpointHook -> '
            'mmdist.SafeCheckpointHook, same arguments (a checkpoint is '
            'written to a temporary file and renamed, old ones are removed '
            'only after it, weights holding NaN are never saved)')
    custom_hooks = list(cfg.get('custom_hooks') or [])
    if checkpoint is not None and checkpoint.get('type') in _SAFE_CHECKPOINT:
        if not any(h.get('type') in _PREEMPTION for h in custom_hooks):
            custom_hooks.append(dict(type='mmdist.PreemptionHook'))
            changes.append(
                'custom_hooks: added mmdist.PreemptionHook (on SIGTERM it '
                'saves a checkpoint after the current iteration and exits '
                'with code 143, so a preempted job resumes from there)')
    if not any(h.get('type') in _GUARD for h in custom_hooks):
        custom_hooks.append(dict(type='mmdist.DivergenceGuardHook'))
        changes.append(
            'custom_hooks: added mmdist.DivergenceGuardHook (stops a run '
            'whose loss stays non-finite, before NaN weights reach a '
            'checkpoint)')
    cfg.custom_hooks = custom_hooks

    train_cfg = cfg.get('train_cfg')
    if train_cfg is None:
        return changes
    loop_change = (
        f'train_cfg: {{old}} -> {_RESUMABLE_LOOP}, same training (--resume '
        'continues inside an epoch from a checkpoint saved mid-epoch)')
    if train_cfg.get('type') in _STOCK_EPOCH_LOOP:
        changes.append(loop_change.format(old=train_cfg['type']))
        train_cfg['type'] = _RESUMABLE_LOOP
    elif 'type' not in train_cfg and train_cfg.get('by_epoch', False):
        train_cfg.pop('by_epoch')
        train_cfg['type'] = _RESUMABLE_LOOP
        changes.append(loop_change.format(old='by_epoch=True'))
    return changes
