"""Registries of mmdist, children of MMEngine's root registries.

Everything mmdist registers lives under the scope ``mmdist``, so a config of
any OpenMMLab package reaches it as ``type='mmdist.DISTLoss'`` once
``custom_imports = dict(imports=['mmdist'])`` has imported the package.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmdist',
    locations=['mmdist.losses', 'mmdist.distillers'])

MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    scope='mmdist',
    locations=['mmdist.engine'])

# Training-engine parts: crash-safe checkpoints, preemption, resumable
# loops, distillation schedules (``type='mmdist.SafeCheckpointHook'``...).
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mmdist', locations=['mmdist.engine'])

LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope='mmdist', locations=['mmdist.engine'])
