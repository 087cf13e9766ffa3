"""Let MMEngine resolve ``mmdist::<path under configs>`` like ``mmdet::``."""
import os.path as osp

from mmengine import hub as hub_module
from mmengine.config import config as config_module
from mmengine.config import utils as config_utils

PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))


def register_config_package() -> None:
    """Add mmdist to the packages whose ``<pkg>::`` config paths MMEngine
    resolves, through ``<package dir>/.mim/configs`` (created by setup.py).

    MMEngine finds a package's directory through ``pkg_resources``, which
    for an editable (PEP 660) install points at site-packages, where no
    ``mmdist`` folder exists; mmdist's own directory is therefore answered
    from the imported package, and every other package as before.
    """
    config_utils.MODULE2PACKAGE.setdefault('mmdist', 'mmdist')
    original = config_module.get_installed_path
    if getattr(original, '_mmdist', False):
        return

    def get_installed_path(package: str) -> str:
        if package == 'mmdist':
            return PACKAGE_DIR
        return original(package)

    get_installed_path._mmdist = True
    # Both modules bound the function at import: patch both lookups
    # (Config.fromfile and mmengine.hub.get_config / get_model).
    config_module.get_installed_path = get_installed_path
    hub_module.hub.get_installed_path = get_installed_path
