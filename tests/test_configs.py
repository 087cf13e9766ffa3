"""Shipped configs: KD/DIST siblings differ only in the loss; teacher
checkpoints come from the model zoos shipped inside the installed packages;
students inherit the packages' own configs."""
import glob
import os.path as osp

import pytest
import yaml
from mmengine.config import Config
from mmengine.utils import get_installed_path

from helpers import CONFIGS, shipped_configs

ALL = [p for task in ('mmdet', 'mmseg', 'mmpretrain')
       for p in shipped_configs(task)]
DIST = [p for p in ALL if p.endswith('_dist.py')]


def without_losses(model: dict) -> dict:
    model = dict(model)
    model['distill_terms'] = [{
        k: v
        for k, v in term.items() if k not in ('loss', 'name')
    } for term in model['distill_terms']]
    return model


@pytest.mark.parametrize('dist_path', DIST)
def test_kd_sibling_differs_only_in_loss(dist_path):
    dist = Config.fromfile(str(CONFIGS / dist_path)).to_dict()
    kd = Config.fromfile(str(CONFIGS / dist_path.replace('_dist', '_kd')))
    kd = kd.to_dict()
    assert without_losses(dist.pop('model')) == without_losses(
        kd.pop('model'))
    assert dist == kd
    dist_types = {t['loss']['type'] for t in
                  Config.fromfile(str(CONFIGS / dist_path)).model.distill_terms}
    assert dist_types == {'mmdist.DISTLoss'}


def zoo_weights(package: str) -> set:
    root = osp.join(get_installed_path(package), '.mim', 'configs')
    urls = set()
    for path in glob.glob(osp.join(root, '*', 'metafile.y*ml')):
        with open(path) as f:
            meta = yaml.safe_load(f)
        models = meta.get('Models', []) if isinstance(meta, dict) else meta
        for model in models or []:
            weights = model.get('Weights') or []
            urls.update([weights] if isinstance(weights, str) else weights)
    return urls


@pytest.mark.parametrize('dist_path', DIST)
def test_teacher_checkpoint_is_in_the_model_zoo(dist_path):
    package = {'mmdet': 'mmdet', 'mmseg': 'mmsegmentation',
               'mmpretrain': 'mmpretrain'}[dist_path.split('/')[0]]
    module = {'mmsegmentation': 'mmseg'}.get(package, package)
    cfg = Config.fromfile(str(CONFIGS / dist_path))
    assert cfg.model.teacher_ckpt in zoo_weights(module)
    assert cfg.model.teacher.startswith(f'{module}::')


@pytest.mark.parametrize('dist_path', DIST)
def test_student_inherits_package_config(dist_path):
    text = (CONFIGS / dist_path).read_text()
    assert "_base_ = 'mm" in text or "_base_ = './" in text
    assert 'student={{_base_.model}}' in text
