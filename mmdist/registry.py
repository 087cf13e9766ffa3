"""Registries of mmdist, children of MMEngine's root registries.

Everything mmdist registers lives under the scope ``mmdist``, so a config of
any OpenMMLab package reaches it as ``type='mmdist.DISTLoss'`` once
``custom_imports = dict(imports=['mmdist'])`` has imported the package.
"""
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
