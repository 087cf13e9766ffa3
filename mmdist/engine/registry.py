"""Registries of mmdist's training-engine parts (hooks, loops).

Children of MMEngine's root registries under the scope ``mmdist``, like the
model registries in :mod:`mmdist.registry`, so any OpenMMLab config reaches
them as ``type='mmdist.SafeCheckpointHook'`` once ``mmdist`` is imported.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import Registry

HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mmdist',
    locations=['mmdist.engine'])

LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope='mmdist',
    locations=['mmdist.engine'])
