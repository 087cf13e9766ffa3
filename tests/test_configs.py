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


def header(rel_path: str) -> str:
    """The leading comment block of a shipped config."""
    lines = []
    for line in (CONFIGS / rel_path).read_text().splitlines():
        if not line.startswith('#'):
            break
        lines.append(line.lstrip('# '))
    return ' '.join(lines)


MIMIC = sorted(
    str(p.relative_to(CONFIGS)) for p in (CONFIGS / 'mmdet').glob(
        '*_dist_mimic.py'))


@pytest.mark.parametrize('path', ALL + MIMIC)
def test_header_names_the_paper_row(path):
    """Every distillation config says which paper row it reproduces (or
    that the paper has none); the DIST ones also their deliberate
    differences from the authors' runs."""
    text = header(path)
    assert 'Paper row' in text, path
    if not path.endswith('_kd.py'):
        assert 'Deliberate difference' in text, path


CIFAR = ['mmpretrain/resnet18_1xb64_cifar100.py',
         'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py',
         'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_kd.py']


@pytest.mark.parametrize('path', CIFAR)
def test_cifar_recipe_is_the_authors(path):
    """One GPU with 64 images (the intra-class term is per process), 240
    epochs, SGD momentum 0.9 without Nesterov, weight decay 5e-4, lr 0.05
    x0.1 at epochs 150, 180 and 210."""
    cfg = Config.fromfile(str(CONFIGS / path))
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.train_cfg.max_epochs == 240
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == (
        'SGD', 0.05, 0.9, 5e-4)
    assert not opt.get('nesterov', False)
    sched = cfg.param_scheduler
    assert (sched.type, sched.milestones, sched.gamma) == (
        'MultiStepLR', [150, 180, 210], 0.1)
    assert cfg.auto_scale_lr.base_batch_size == 64


@pytest.mark.parametrize('path', [
    p for p in ALL if 'to_resnet18_8xb32_in1k' in p])
def test_imagenet_resnet18_recipe_has_the_authors_optimizer(path):
    """MMPretrain's ResNet recipe plus the authors' Nesterov momentum and no
    weight decay on biases and normalisation layers."""
    cfg = Config.fromfile(str(CONFIGS / path))
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay,
            opt.nesterov) == ('SGD', 0.1, 0.9, 1e-4, True)
    assert cfg.optim_wrapper.paramwise_cfg == dict(
        norm_decay_mult=0.0, bias_decay_mult=0.0)
    assert cfg.train_dataloader.batch_size == 32
    assert cfg.train_cfg.max_epochs == 100


def test_the_paramwise_options_reach_the_optimizer():
    """No weight decay on the student's biases and BatchNorm parameters, the
    rest decayed; the teacher's parameters are not optimised."""
    from mmengine.optim import build_optim_wrapper

    from helpers import build, load_offline
    cfg = load_offline('mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py')
    model = build(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups
             for p in g['params']}
    assert wrapper.optimizer.defaults['nesterov']
    for name, param in model.named_parameters():
        expected = 0.0 if param.ndim == 1 else 1e-4
        assert decay[id(param)] == expected, name
    assert not any(id(p) in decay for p in model.teacher.parameters())


@pytest.mark.parametrize('path', [p for p in ALL if p.startswith('mmseg/')])
def test_cityscapes_configs_keep_mmseg_recipe(path):
    """4xb2-80k: 2 images per GPU, 80k iterations, lr 0.01 (MMSeg's recipe,
    8 images per step on 4 GPUs)."""
    cfg = Config.fromfile(str(CONFIGS / path))
    assert '4xb2-80k' in path
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_cfg.max_iters == 80000
    assert cfg.optim_wrapper.optimizer.lr == 0.01


def test_readme_commands_agree_with_the_recipes():
    """Every `tools/dist_train.sh CONFIG N` in the README trains with the
    number of images per step of the config's recipe (model index)."""
    import re

    from mmdist.utils.config import PACKAGE_DIR
    index_root = osp.join(PACKAGE_DIR, '.mim')
    with open(osp.join(index_root, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    batch = {}
    for rel in imports:
        with open(osp.join(index_root, rel)) as f:
            for model in yaml.safe_load(f)['Models']:
                batch[model['Config'].partition('/')[-1]] = \
                    model['Metadata']['Batch Size']
    readme = (CONFIGS.parent / 'README.md').read_text()
    commands = re.findall(
        r'tools/dist_train\.sh configs/(\S+\.py) (\d+)', readme)
    assert commands
    for path, gpus in commands:
        cfg = Config.fromfile(str(CONFIGS / path))
        assert int(gpus) * cfg.train_dataloader.batch_size == batch[path], (
            path, gpus)
