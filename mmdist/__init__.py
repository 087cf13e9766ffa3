"""mmdist: DIST knowledge distillation for OpenMMLab 2.0.

Importing the package registers the losses, the distiller and the CPU-capable
DDP wrapper, lets MMEngine resolve ``mmdist::`` config paths, and makes
checkpoints written by MMEngine loadable on torch >= 2.6 with
``weights_only=True`` (the rule is stated in
:func:`~mmdist.utils.checkpoint.install_safe_checkpoint_loading`).
"""
from .utils.checkpoint import install_safe_checkpoint_loading
from .utils.config import register_config_package
from .version import __version__

register_config_package()
install_safe_checkpoint_loading()

from . import distillers, engine, losses  # noqa: E402,F401
from .registry import HOOKS, LOOPS, MODEL_WRAPPERS, MODELS  # noqa: E402,F401

__all__ = ['__version__', 'MODELS', 'MODEL_WRAPPERS', 'HOOKS', 'LOOPS']
