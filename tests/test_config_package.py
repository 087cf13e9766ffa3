"""``mmdist::`` config paths resolve like ``mmdet::`` for an installed
mmdist, from a config outside the repository."""
import os.path as osp

from mmengine.config import Config

import mmdist  # noqa: F401


def test_outside_config_inherits_mmdist_config(tmp_path):
    user_cfg = tmp_path / 'my_project' / 'my_retinanet_dist.py'
    user_cfg.parent.mkdir()
    user_cfg.write_text(
        "_base_ = 'mmdist::mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'\n"
        "train_dataloader = dict(batch_size=4)\n")
    cfg = Config.fromfile(str(user_cfg))
    assert cfg.model.type == 'mmdist.Distiller'
    assert cfg.model.student.type == 'RetinaNet'
    assert cfg.train_dataloader.batch_size == 4


def test_package_ships_configs_and_tools():
    from mmengine.utils import get_installed_path
    root = get_installed_path('mmdist')
    assert osp.isdir(osp.join(root, '.mim', 'configs', 'mmdet'))
    assert osp.isfile(osp.join(root, '.mim', 'tools', 'train.py'))
