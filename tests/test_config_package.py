"""``mmdist::`` config paths resolve like ``mmdet::`` for an installed
mmdist, from a config outside the repository, run from outside it."""
import os.path as osp
import subprocess
import sys

import mmdist


def test_outside_config_inherits_mmdist_config(tmp_path):
    user_cfg = tmp_path / 'my_project' / 'my_retinanet_dist.py'
    user_cfg.parent.mkdir()
    user_cfg.write_text("_base_ = 'mmdist::mmdet/"
                        "retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'\n"
                        "train_dataloader = dict(batch_size=4)\n")
    code = ('import sys, mmdist; from mmengine.config import Config; '
            'cfg = Config.fromfile(sys.argv[1]); '
            'print(cfg.model.type, cfg.model.student.type, '
            'cfg.train_dataloader.batch_size)')
    # A fresh interpreter in another directory: nothing of the repository on
    # sys.path but what the installation put there.
    out = subprocess.run(
        [sys.executable, '-c', code, str(user_cfg)],
        cwd=str(tmp_path),
        capture_output=True,
        text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ['mmdist.Distiller', 'RetinaNet', '4']


def test_package_ships_configs_and_tools():
    root = osp.dirname(mmdist.__file__)
    assert osp.isdir(osp.join(root, '.mim', 'configs', 'mmdet'))
    assert osp.isfile(osp.join(root, '.mim', 'model-index.yml'))
    assert osp.isfile(osp.join(root, '.mim', 'tools', 'train.py'))


def test_mmengine_hub_resolves_mmdist_configs():
    """mmengine.hub.get_config looks the package up through its own import
    of get_installed_path; it must find mmdist's configs too (also with the
    editable install)."""
    from mmengine.hub import get_config
    cfg = get_config(
        'mmdist::mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py')
    assert cfg.model.type == 'mmdist.Distiller'
