"""mmdist's losses build from each OpenMMLab registry via custom_imports."""
import importlib

import pytest
from mmengine.config import Config

import mmdist
from mmdist.losses import DISTLoss, KDLoss


@pytest.mark.parametrize('package', ['mmdet', 'mmseg', 'mmpretrain'])
def test_loss_builds_from_package_registry(tmp_path, package):
    cfg_file = tmp_path / 'loss_cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['mmdist'], "
        "allow_failed_imports=False)\n"
        f"default_scope = '{package}'\n"
        "dist = dict(type='mmdist.DISTLoss', beta=2.0, tau=4.0)\n"
        "kd = dict(type='mmdist.KDLoss', tau=4.0)\n")
    cfg = Config.fromfile(str(cfg_file))
    registry = importlib.import_module(f'{package}.registry').MODELS
    dist = registry.build(cfg.dist)
    kd = registry.build(cfg.kd)
    assert isinstance(dist, DISTLoss) and dist.beta == 2.0 and dist.tau == 4.0
    assert isinstance(kd, KDLoss) and kd.tau == 4.0


def test_mmdist_registry_scope():
    assert mmdist.MODELS.scope == 'mmdist'
    assert mmdist.MODELS.get('DISTLoss') is DISTLoss
    assert mmdist.MODELS.get('Distiller') is not None
    assert mmdist.MODEL_WRAPPERS.get('CPUCompatibleDDP') is not None
