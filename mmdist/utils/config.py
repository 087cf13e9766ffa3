"""Let MMEngine resolve ``mmdist::<path under configs>`` like ``mmdet::``."""
from mmengine.config import utils as config_utils


def register_config_package() -> None:
    """Add mmdist to the packages whose ``<pkg>::`` config paths MMEngine
    resolves (through ``<package dir>/.mim/configs``, which setup.py
    creates)."""
    config_utils.MODULE2PACKAGE.setdefault('mmdist', 'mmdist')
