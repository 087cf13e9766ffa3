"""Shipped configs: KD/DIST siblings differ only in the loss; teacher
checkpoints come from the model zoos shipped inside the installed packages;
students inherit the packages' own configs."""
import functools
import glob
import io
import os.path as osp
import re
import tokenize
from typing import Dict, List, Tuple

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.utils import get_installed_path

from helpers import CONFIGS, shipped_configs

ALL = [
    p for task in ('mmdet', 'mmseg', 'mmpretrain')
    for p in shipped_configs(task)
]
DIST = [p for p in ALL if p.endswith('_dist.py')]
# Every distillation config: the _dist/_kd pairs and the _mimic/_sync ones.
DISTILL = sorted(
    str(p.relative_to(CONFIGS)) for task in ('mmdet', 'mmseg', 'mmpretrain')
    for p in (CONFIGS / task).glob('*_to_*.py'))


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
    assert without_losses(dist.pop('model')) == without_losses(kd.pop('model'))
    assert dist == kd
    dist_types = {
        t['loss']['type']
        for t in Config.fromfile(str(CONFIGS / dist_path)).model.distill_terms
    }
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
    package = {
        'mmdet': 'mmdet',
        'mmseg': 'mmsegmentation',
        'mmpretrain': 'mmpretrain'
    }[dist_path.split('/')[0]]
    module = {'mmsegmentation': 'mmseg'}.get(package, package)
    cfg = Config.fromfile(str(CONFIGS / dist_path))
    assert cfg.model.teacher_ckpt in zoo_weights(module)
    assert cfg.model.teacher.startswith(f'{module}::')


@pytest.mark.parametrize('dist_path', DIST)
def test_student_inherits_package_config(dist_path):
    """The first base is the student's own config (a package's, or the
    folder's student baseline), the second the shared distillation runtime,
    and the student is that config's model."""
    text = (CONFIGS / dist_path).read_text()
    bases = Config._get_base_files(str(CONFIGS / dist_path))
    assert bases[0].startswith(('mm', './')), bases
    assert bases[1:] == ['../_base_/distill_runtime.py'], bases
    assert 'student={{_base_.model}}' in text
    cfg = Config.fromfile(str(CONFIGS / dist_path))
    # The logged parts add up under MMEngine's default log_processor.
    assert 'mean_pattern' not in cfg.get('log_processor', {})


TASKS = ('mmdet', 'mmseg', 'mmpretrain')
COMMENTED = sorted(
    str(p.relative_to(CONFIGS)) for folder in TASKS + ('demo', '_base_')
    for p in (CONFIGS / folder).glob('*.py'))


def comment_lines(rel_path: str) -> Tuple[int, int]:
    """(leading comment lines, lines holding a comment) of a config, as
    Python's tokenizer sees them (``#`` inside strings does not count)."""
    source = (CONFIGS / rel_path).read_text()
    rows = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lead = 0
    for line in source.splitlines():
        if not line.startswith('#'):
            break
        lead += 1
    return lead, len(rows)


@pytest.mark.parametrize('path', COMMENTED)
def test_configs_carry_short_comments(path):
    """At most three header comment lines and five comment lines in all:
    the recipe, the paper's rows and the reasons for the defaults live in
    the folder's README and metafile, as MMDet's configs do."""
    lead, total = comment_lines(path)
    assert lead <= 3 and total <= 5, (path, lead, total)


def test_no_hardware_narratives_in_configs():
    pattern = re.compile(
        r'this (2-core )?(machine|cpu)|the lent|shared at the time|H200', re.I)
    for path in CONFIGS.rglob('*'):
        if path.is_file() and path.suffix in ('.py', '.md', '.yml'):
            assert not pattern.search(path.read_text()), path


def readme_rows(task: str) -> Dict[str, List[str]]:
    """The results table of a folder's README: config file -> its cells."""
    rows = {}
    for line in (CONFIGS / task / 'README.md').read_text().splitlines():
        match = re.match(r'\| \[([^\]]+\.py)\]\(([^)]+)\) \|(.*)\|$', line)
        if match:
            assert match.group(1) == match.group(2), line
            assert match.group(1) not in rows, line
            rows[match.group(1)] = [
                c.strip() for c in match.group(3).split('|')
            ]
    return rows


@pytest.mark.parametrize('task', TASKS)
def test_readme_and_metafile_list_every_config(task):
    """Each task folder has a README (results table: config, teacher,
    student, paper, ours; the DIST citation) and a metafile, and both list
    every config of the folder, and nothing else."""
    configs = sorted(p.name for p in (CONFIGS / task).glob('*.py'))
    readme = (CONFIGS / task / 'README.md').read_text()
    assert '| config | teacher | student | paper | ours |' in readme
    assert 'Knowledge Distillation from A Stronger Teacher' in readme
    assert '2205.10536' in readme and '```bibtex' in readme
    rows = readme_rows(task)
    assert sorted(rows) == configs
    assert all(len(cells) == 4 for cells in rows.values()), rows
    meta = yaml.safe_load((CONFIGS / task / 'metafile.yml').read_text())
    listed = sorted(m['Config'] for m in meta['Models'])
    assert listed == [f'configs/{task}/{name}' for name in configs]


def test_demo_configs_stay_out_of_the_model_index():
    index = (CONFIGS / 'model-index.yml').read_text()
    assert 'demo' not in index
    for task in TASKS:
        assert 'demo/' not in (CONFIGS / task / 'metafile.yml').read_text()


# The explicit terms each shipped config had before it took the short form
# (dict(head=..., loss=...)): building the config must give exactly these.
def _pair(student, teacher, loss, **kwargs):
    return dict(
        student_module=student, teacher_module=teacher, loss=loss, **kwargs)


_RETINA = ('bbox_head.retina_cls', 'bbox_head.retina_cls')
_ATSS = ('bbox_head.atss_cls', 'bbox_head.atss_cls')
_FASTER = ('roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.0.fc_cls')
_SEG = ('decode_head.conv_seg', 'decode_head.conv_seg')
_AUX = ('auxiliary_head.conv_seg', 'auxiliary_head.conv_seg')
_CLS = ('head.fc', 'head.fc')
_DIST_1 = dict(type='mmdist.DISTLoss', beta=1.0, gamma=1.0, tau=1.0)
_DIST_SIG = dict(_DIST_1, activation='sigmoid')
_DIST_SOFT = dict(_DIST_1, activation='softmax')
_DIST_2 = dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0, tau=1.0)
_KD_SIG = dict(type='mmdist.KDLoss', activation='sigmoid', tau=1.0)
_MIMIC = dict(
    student_module='neck',
    teacher_module='neck',
    name='mimic',
    connector=dict(
        type='mmdist.ConvConnector',
        in_channels=256,
        out_channels=256,
        num_levels=5),
    loss=dict(type='mmdist.FeatureMSELoss', loss_weight=1.0))
_RETINA_P = 'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco'
_FASTER_P = ('mmdet/cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_'
             'coco')
_DLV3_P = ('mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_'
           'cityscapes-512x1024')
_PSP_P = ('mmseg/deeplabv3_r101-d8_to_pspnet_r18-d8_4xb2-80k_'
          'cityscapes-512x1024')
_SEGF_P = ('mmseg/segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_'
           'cityscapes-512x1024')
_VOC_P = 'mmdet/retinanet_x101-64x4d-coco_to_r50_fpn_1x_voc0712'
_DINO_P = 'mmdet/dino-5scale_swin-l_to_dino-4scale_r50_8xb2-12e_coco'
_M2F_P = ('mmseg/mask2former_swin-l-in22k_to_r50_8xb2-90k_'
          'cityscapes-512x1024')
_VOC_TO_COCO = dict(
    aeroplane='airplane',
    motorbike='motorcycle',
    sofa='couch',
    tvmonitor='tv',
    diningtable='dining table',
    pottedplant='potted plant')
EXPLICIT = {
    f'{_RETINA_P}_dist.py': [_pair(*_RETINA, _DIST_SIG)],
    f'{_RETINA_P}_kd.py': [_pair(*_RETINA, _KD_SIG)],
    f'{_RETINA_P}_dist_sync.py': [_pair(*_RETINA, dict(_DIST_SIG, sync=True))],
    f'{_RETINA_P}_dist_mimic.py': [_pair(*_RETINA, _DIST_SIG), _MIMIC],
    f'{_FASTER_P}_dist.py': [_pair(*_FASTER, _DIST_SOFT)],
    f'{_FASTER_P}_kd.py': [
        _pair(*_FASTER,
              dict(type='mmdist.KDLoss', activation='softmax', tau=1.0))
    ],
    f'{_FASTER_P}_dist_mimic.py': [_pair(*_FASTER, _DIST_SOFT), _MIMIC],
    'mmdet/atss_r101_to_r50_fpn_1x_coco_dist.py': [_pair(*_ATSS, _DIST_SIG)],
    'mmdet/atss_r101_to_r50_fpn_1x_coco_kd.py': [_pair(*_ATSS, _KD_SIG)],
    f'{_VOC_P}_dist.py': [_pair(*_RETINA, _DIST_SIG, class_map=_VOC_TO_COCO)],
    f'{_VOC_P}_kd.py': [_pair(*_RETINA, _KD_SIG, class_map=_VOC_TO_COCO)],
    f'{_DINO_P}_dist.py':
    [_pair('bbox_head', 'bbox_head', _DIST_SIG, name='dist', queries={})],
    f'{_DINO_P}_kd.py':
    [_pair('bbox_head', 'bbox_head', _KD_SIG, name='kd', queries={})],
    f'{_M2F_P}_dist.py':
    [_pair('decode_head', 'decode_head', _DIST_SOFT, name='dist', queries={})],
    f'{_M2F_P}_kd.py': [
        _pair(
            'decode_head',
            'decode_head',
            dict(type='mmdist.KDLoss', activation='softmax', tau=1.0),
            name='kd',
            queries={})
    ],
    'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist.py':
    [_pair(*_CLS, _DIST_2)],
    'mmpretrain/resnet34_to_resnet18_8xb32_in1k_kd.py':
    [_pair(*_CLS, dict(type='mmdist.KDLoss', tau=4.0))],
    'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist_sync.py':
    [_pair(*_CLS, dict(_DIST_2, sync=True))],
    'mmpretrain/resnet152_to_resnet18_8xb32_in1k_dist.py':
    [_pair(*_CLS, _DIST_2)],
    'mmpretrain/resnet152_to_resnet18_8xb32_in1k_kd.py':
    [_pair(*_CLS, dict(type='mmdist.KDLoss', tau=4.0))],
    'mmpretrain/resnet50_to_mobilenet-v2_8xb32_in1k_dist.py':
    [_pair(*_CLS, _DIST_2)],
    'mmpretrain/resnet50_to_mobilenet-v2_8xb32_in1k_kd.py':
    [_pair(*_CLS, dict(type='mmdist.KDLoss', tau=4.0))],
    'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py':
    [_pair(*_CLS, dict(_DIST_2, tau=4.0))],
    'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_kd.py':
    [_pair(*_CLS, dict(type='mmdist.KDLoss', tau=4.0))],
    f'{_SEGF_P}_dist.py': [_pair(*_SEG, _DIST_1, resize_teacher=True)],
    f'{_SEGF_P}_kd.py': [
        _pair(*_SEG, dict(type='mmdist.KDLoss', tau=1.0), resize_teacher=True)
    ],
}
for _p in (_DLV3_P, _PSP_P):
    EXPLICIT[f'{_p}_dist.py'] = [
        _pair(*_SEG, _DIST_1),
        _pair(*_AUX, dict(_DIST_1, loss_weight=0.4), name='dist_aux')
    ]
    EXPLICIT[f'{_p}_kd.py'] = [
        _pair(*_SEG, dict(type='mmdist.KDLoss', tau=1.0)),
        _pair(
            *_AUX,
            dict(type='mmdist.KDLoss', tau=1.0, loss_weight=0.4),
            name='kd_aux')
    ]
# Two-stage pairs build a ResNeXt-101 Cascade Mask R-CNN teacher, the DINO
# and Mask2Former pairs a Swin-L one: slow on 2 CPU cores (the VOC pair's
# teacher is checked in test_class_map.py).
SHORT_FORM = [
    pytest.param(p, marks=pytest.mark.heavy) if p.startswith(
        (_FASTER_P, _VOC_P, _DINO_P, _M2F_P)) else p for p in sorted(EXPLICIT)
]


def dist_sibling(path: str) -> str:
    """The `_dist` config whose student and teacher a config shares."""
    return re.sub(r'_(kd|dist_sync|dist_mimic)\.py$', '_dist.py', path)


@functools.lru_cache(maxsize=1)
def built_pair(dist_path: str):
    """The Distiller built (offline, random weights) from a `_dist` config;
    float32 teacher, so that the teacher the terms see is the stock one."""
    from mmengine.registry import init_default_scope

    from helpers import load_offline
    from mmdist.utils import build_model
    cfg = load_offline(dist_path)
    cfg.model.teacher_precision = 'float32'
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return build_model(cfg)  # no init_weights: the terms do not need them


def describe(term) -> dict:
    """What makes a built DistillTerm: name, modules, options, the loss's
    type and every setting of it (defaults filled), the connector."""

    def settings(module):
        return {
            k: v
            for k, v in vars(module).items() if not k.startswith('_')
            and not isinstance(v, (torch.Tensor, torch.nn.Module))
        }

    return dict(
        name=term.name,
        student_module=term.student_module,
        teacher_module=term.teacher_module,
        resize_teacher=term.resize_teacher,
        ignore_index=term.ignore_index,
        max_calls=term.max_calls,
        queries=getattr(term, 'query_options', None),
        teacher_columns=None
        if term.class_mapping is None else term.class_mapping.to_config(),
        loss=(type(term.loss).__name__, settings(term.loss)),
        connector=None if term.connector is None else
        (type(term.connector).__name__, settings(term.connector),
         [tuple(p.shape) for p in term.connector.parameters()]))


@pytest.mark.parametrize('path', SHORT_FORM)
def test_short_form_expands_to_the_explicit_terms(path):
    """The shipped config states its terms in the short form; built, they
    are exactly the explicit terms it stated before (names, modules, loss
    types and settings, connectors), so the change is one of form only."""
    from mmdist.distillers.expand import expand_terms
    from mmdist.distillers.queries import make_term
    cfg = Config.fromfile(str(CONFIGS / path))
    assert any('head' in t or 'student_module' not in t
               for t in cfg.model.distill_terms), 'not in the short form'
    model = built_pair(dist_sibling(path))
    if path == dist_sibling(path):
        shipped = list(model.terms)
    else:  # a sibling: the same expansion the Distiller runs when built
        shipped = [
            make_term(t) for t in expand_terms(
                cfg.model.distill_terms,
                model.student,
                model.teacher,
                log=False,
                class_names=model.class_names)
        ]
    explicit = [
        make_term(t) for t in expand_terms(
            EXPLICIT[path],
            model.student,
            model.teacher,
            log=False,
            class_names=model.class_names)
    ]
    assert [describe(t) for t in shipped] == [describe(t) for t in explicit]


def test_every_short_form_config_is_checked():
    """Every shipped config written in the short form is in EXPLICIT."""
    for path in DISTILL:
        text = (CONFIGS / path).read_text()
        if re.search(r"dict\(\s*(head=|loss=)", text):
            assert path in EXPLICIT, path


CIFAR = [
    'mmpretrain/resnet18_1xb64_cifar100.py',
    'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_dist.py',
    'mmpretrain/resnet50_to_resnet18_1xb64_cifar100_kd.py'
]


@pytest.mark.parametrize('path', CIFAR)
def test_cifar_recipe_is_the_authors(path):
    """One GPU with 64 images (the intra-class term is per process), 240
    epochs, SGD momentum 0.9 without Nesterov, weight decay 5e-4, lr 0.05
    x0.1 at epochs 150, 180 and 210."""
    cfg = Config.fromfile(str(CONFIGS / path))
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.train_cfg.max_epochs == 240
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.05,
                                                                  0.9, 5e-4)
    assert not opt.get('nesterov', False)
    sched = cfg.param_scheduler
    assert (sched.type, sched.milestones,
            sched.gamma) == ('MultiStepLR', [150, 180, 210], 0.1)
    assert cfg.auto_scale_lr.base_batch_size == 64


@pytest.mark.parametrize('path',
                         [p for p in ALL if 'to_resnet18_8xb32_in1k' in p])
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
    decay = {
        id(p): g['weight_decay']
        for g in wrapper.optimizer.param_groups
        for p in g['params']
    }
    assert wrapper.optimizer.defaults['nesterov']
    for name, param in model.named_parameters():
        expected = 0.0 if param.ndim == 1 else 1e-4
        assert decay[id(param)] == expected, name
    assert not any(id(p) in decay for p in model.teacher.parameters())


@pytest.mark.parametrize(
    'path', [p for p in ALL if p.startswith('mmseg/') and '4xb2-80k' in p])
def test_cityscapes_configs_keep_mmseg_recipe(path):
    """4xb2-80k: 2 images per GPU, 80k iterations, lr 0.01 (MMSeg's recipe,
    8 images per step on 4 GPUs)."""
    cfg = Config.fromfile(str(CONFIGS / path))
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_cfg.max_iters == 80000
    assert cfg.optim_wrapper.optimizer.lr == 0.01


@pytest.mark.parametrize('path',
                         [p for p in ALL if p.startswith('mmseg/mask2former')])
def test_mask2former_configs_keep_mmseg_recipe(path):
    """8xb2-90k: 2 images per GPU, 90k iterations, AdamW lr 1e-4 (MMSeg's
    Mask2Former recipe, 16 images per step on 8 GPUs)."""
    cfg = Config.fromfile(str(CONFIGS / path))
    assert '8xb2-90k' in path
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_cfg.max_iters == 90000
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
