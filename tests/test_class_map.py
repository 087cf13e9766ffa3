"""A teacher trained on another label set: class names read from configs,
matched by name, ``class_map`` overrides, the teacher's columns mapped per
head kind, the refusals, the short form, ``print_terms.py`` and the shipped
VOC <- COCO RetinaNet configs."""
import copy
import importlib.util
import math
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope

from helpers import CONFIGS, REPO, build, det_batch, load_offline, train_step
from mmdist.distillers.class_map import (ClassMapping, ClassNames,
                                         config_classes, dataset_classes,
                                         resolve_columns)
from mmdist.distillers.expand import expand_terms
from mmdist.distillers.terms import DistillTerm
from mmdist.losses.dist import DISTLoss
from mmdist.registry import MODELS

VOC_DIST = 'mmdet/retinanet_x101-64x4d-coco_to_r50_fpn_1x_voc0712_dist.py'
VOC_KD = VOC_DIST.replace('_dist.py', '_kd.py')
SHAPES = ['square', 'circle', 'triangle', 'cross', 'ring']
# The teacher's label set: the student's five shapes in another order, and
# three more.
TEACHER = [
    'ring', 'star', 'square', 'cross', 'heart', 'circle', 'triangle', 'moon'
]
PERM = [TEACHER.index(n) for n in SHAPES]  # teacher column per student class
EXTRA = [i for i, n in enumerate(TEACHER) if n not in SHAPES]


# ---------------------------------------------------------------- names
def test_class_names_come_from_metainfo_then_the_dataset_type():
    cfg = Config.fromfile(str(CONFIGS / VOC_DIST))
    voc = config_classes(cfg)  # RepeatDataset > ConcatDataset > VOCDataset
    assert len(voc) == 20 and voc[0] == 'aeroplane' and voc[-1] == 'tvmonitor'
    wrapped = dict(
        type='RepeatDataset',
        times=2,
        dataset=dict(
            type='ConcatDataset',
            datasets=[dict(type='CocoDataset', metainfo=dict(classes=['a']))]))
    assert dataset_classes(wrapped, 'mmdet') == ['a']
    assert dataset_classes(dict(type='NoSuchDataset'), 'mmdet') is None
    cfg.metainfo = dict(classes=('x', 'y'))  # the config's own wins
    assert config_classes(cfg) == ['x', 'y']


def test_tools_record_the_student_classes_in_the_config():
    from mmdist.utils import model_config, resolve_teacher_paths
    cfg = Config.fromfile(str(CONFIGS / VOC_DIST))
    assert 'student_classes' not in cfg.model
    assert model_config(cfg).student_classes[:2] == ['aeroplane', 'bicycle']
    resolve_teacher_paths(cfg, str(CONFIGS / VOC_DIST))
    assert len(cfg.model.student_classes) == 20


# -------------------------------------------------------------- resolving
def test_match_by_name_with_class_map_overrides_and_lists():
    columns, how = resolve_columns(
        ['cat', 'Dining_Table', 'vehicle'],
        ['dog', 'car', 'cat', 'dining table', 'truck'],
        3,
        5,
        class_map=dict(vehicle=['car', 4]))
    assert columns == [[2], [3], [1, 4]]
    assert how == ['name', 'name, spelled differently', 'class_map']
    # Indices work where names are unknown.
    assert resolve_columns(None, None, 2, 3, {0: 2, 1: 0})[0] == [[2], [0]]


def test_student_class_without_teacher_class_names_both_lists():
    with pytest.raises(ValueError) as info:
        resolve_columns(['aeroplane', 'cat'], ['airplane', 'cat', 'dog'], 2, 3)
    message = str(info.value)
    assert "'aeroplane' (closest: airplane)" in message
    assert "Student classes: ['aeroplane', 'cat']" in message
    assert "Teacher classes: ['airplane', 'cat', 'dog']" in message
    assert 'class_map' in message


def test_unknown_teacher_names_ask_for_class_map():
    with pytest.raises(ValueError) as info:
        resolve_columns(['a', 'b'], None, 2, 3)
    message = str(info.value)
    assert 'predict 2 and 3 classes' in message
    assert "teacher's class names are unknown" in message
    assert 'class_map' in message and 'teacher_classes' in message
    with pytest.raises(ValueError, match='not one of its 3 classes'):
        resolve_columns(['a'], ['x', 'y', 'z'], 1, 3, dict(a='w'))


# ------------------------------------------------------ mapping the columns
def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64)).float()


def test_classifier_drops_unmapped_mass_and_renormalises():
    teacher = _logits([[0.1, 0.2, 0.3, 0.4]])
    mapping = ClassMapping([2, 0], classes=4, activation='softmax')
    # Student (c, a): 0.3 and 0.1 of the 0.4 the two keep.
    assert torch.allclose(mapping(teacher).exp(), torch.tensor([[.75, .25]]))
    # One-to-one maps equal the restricted logits at every temperature.
    for tau in (1., 4.):
        assert torch.allclose(
            F.softmax(mapping(teacher) / tau, 1),
            F.softmax(teacher[:, [2, 0]] / tau, 1),
            atol=1e-7)


def test_segmentor_sums_a_list_and_renormalises_per_pixel():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(1, 4, 1, 1)
    teacher = probs.expand(2, 4, 3, 3).log()
    mapping = ClassMapping([[0, 1], 3], classes=4, activation='softmax')
    out = mapping(teacher).exp()
    assert out.shape == (2, 2, 3, 3)
    expected = torch.tensor([0.3 / 0.7, 0.4 / 0.7]).reshape(1, 2, 1, 1)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)


def test_box_head_gives_unmapped_mass_to_background():
    # Teacher: 3 classes and background (last); student: 2 classes.
    teacher = _logits([[0.1, 0.2, 0.3, 0.4]])
    mapping = ClassMapping([1, 2],
                           classes=3,
                           activation='softmax',
                           background=True)
    assert torch.allclose(
        mapping(teacher).exp(), torch.tensor([[0.2, 0.3, 0.5]]), atol=1e-6)


def test_sigmoid_takes_logits_and_combines_max_or_noisy_or():
    teacher = torch.tensor([[0., 0., 3.]])
    plain = ClassMapping([2, 0], classes=3, activation='sigmoid')
    assert torch.equal(plain(teacher), teacher[:, [2, 0]])
    both = [[0, 1]]
    assert float(ClassMapping(both, 3, 'sigmoid')(teacher)) == 0.  # max
    noisy = ClassMapping(both, 3, 'sigmoid', combine='noisy_or')(teacher)
    # 1 - (1 - 0.5)^2 = 0.75: logit log 3.
    assert float(noisy) == pytest.approx(math.log(3), abs=1e-6)
    with pytest.raises(ValueError, match="'sum' does not fit a sigmoid"):
        ClassMapping(both, 3, 'sigmoid', combine='sum')


def test_anchor_major_layout_is_mapped_per_anchor():
    anchors, teacher_classes = 3, 4
    teacher = torch.randn(2, anchors * teacher_classes, 5, 6)
    mapping = ClassMapping([3, 1],
                           classes=teacher_classes,
                           activation='sigmoid')
    out = mapping(teacher)
    assert out.shape == (2, anchors * 2, 5, 6)
    for a in range(anchors):
        assert torch.equal(out[:, 2 * a], teacher[:, 4 * a + 3])
        assert torch.equal(out[:, 2 * a + 1], teacher[:, 4 * a + 1])


def test_identity_map_leaves_the_loss_unchanged_and_a_permutation_permutes():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    for activation in ('softmax', 'sigmoid'):
        loss = DISTLoss(activation=activation, tau=2.)
        identity = ClassMapping(list(range(5)), 5, activation)
        assert float(loss(student, identity(teacher))) == pytest.approx(
            float(loss(student, teacher)), abs=1e-6)
    permuted = ClassMapping([4, 0, 3, 1, 2], 5, 'sigmoid')(teacher)
    assert torch.equal(permuted, teacher[:, [4, 0, 3, 1, 2]])


def test_ignore_index_and_row_weights_still_apply():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    term = DistillTerm(
        'decode_head.conv_seg',
        'decode_head.conv_seg',
        dict(type='mmdist.DISTLoss'),
        ignore_index=255,
        teacher_columns=dict(columns=[2, 0, 3], classes=4))
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    labels[:, :, :2] = 255
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    got = term.losses([student], [teacher], samples)['loss_dist']
    mapped = F.log_softmax(teacher[:, [2, 0, 3]], dim=1)
    weight = (labels[:, 0] != 255).float()
    assert float(got) == pytest.approx(
        float(DISTLoss()(student, mapped, weight)), abs=1e-6)


# --------------------------------------------- identity through real models
def _demo_student() -> ConfigDict:
    cfg = Config.fromfile(str(CONFIGS / 'demo' / 'det_student.py'))
    init_default_scope('mmdet')
    model = copy.deepcopy(cfg.model)
    model.backbone.norm_eval = True
    return model


def _permuted_teacher(student_model,
                      tmp_path,
                      head_attr,
                      weight_names,
                      blocks=1):
    """A copy of ``student_model`` whose class rows are the student's in
    :data:`TEACHER`'s order plus three random ones, saved with its class
    names in the checkpoint meta (where a zoo checkpoint keeps them)."""
    state = copy.deepcopy(student_model.state_dict())
    for name in weight_names:
        value = state[name]
        per = value.shape[0] // blocks
        rows = value.reshape(blocks, per, *value.shape[1:])
        out = torch.randn(blocks, len(TEACHER), *value.shape[1:])
        out[:, PERM] = rows
        state[name] = out.reshape(blocks * len(TEACHER), *value.shape[1:])
    path = tmp_path / 'teacher.pth'
    torch.save(
        dict(
            state_dict=state,
            meta=dict(dataset_meta=dict(classes=tuple(TEACHER)))), path)
    return str(path)


def _check_identity(distiller, batch):
    distiller.eval()  # the same BatchNorm statistics on both sides
    data = distiller.data_preprocessor(batch, True)
    (term, ) = distiller.terms
    seen = []
    losses_of = term.losses

    def spy(students, teachers, *args, **kwargs):
        seen.append((students, teachers))
        return losses_of(students, teachers, *args, **kwargs)

    term.losses = spy
    with torch.no_grad():
        losses = distiller.loss(data['inputs'], data['data_samples'])
    ((students, teachers), ) = seen
    for s, t in zip(students, teachers):
        mapped = term.map_teacher(t)
        if term.class_mapping.activation == 'softmax':
            assert torch.allclose(mapped.exp(), s.softmax(1), atol=1e-6)
        else:
            assert torch.allclose(mapped, s, atol=1e-6)
    assert float(losses[f'loss_{term.name}']) <= 1e-6


def test_sigmoid_dense_teacher_with_permuted_and_extra_classes(tmp_path):
    student = _demo_student()
    built = MODELS.build(student)
    blocks = built.bbox_head.num_base_priors
    ckpt = _permuted_teacher(
        built, tmp_path, 'bbox_head',
        ['bbox_head.retina_cls.weight', 'bbox_head.retina_cls.bias'], blocks)
    teacher = copy.deepcopy(student)
    teacher.bbox_head.num_classes = len(TEACHER)
    distiller = MODELS.build(
        dict(
            type='mmdist.Distiller',
            student=student,
            teacher=teacher,
            teacher_ckpt=ckpt,
            student_classes=SHAPES,
            distill_terms=[dict(head='bbox_head')]))
    distiller.student.load_state_dict(built.state_dict())
    (term, ) = distiller.terms
    assert term.class_mapping.columns == [[c] for c in PERM]
    _check_identity(distiller, det_batch(num_classes=5, size=(64, 64)))


def test_classifier_teacher_with_permuted_and_extra_classes(tmp_path):
    init_default_scope('mmpretrain')
    student = ConfigDict(
        type='ImageClassifier',
        data_preprocessor=dict(
            type='ClsDataPreprocessor',
            mean=[128.] * 3,
            std=[64.] * 3,
            num_classes=5),
        backbone=dict(type='ResNet', depth=18, base_channels=16),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=5,
            in_channels=128,
            loss=dict(type='CrossEntropyLoss')))
    built = MODELS.build(student)
    ckpt = _permuted_teacher(built, tmp_path, 'head',
                             ['head.fc.weight', 'head.fc.bias'])
    teacher = copy.deepcopy(student)
    teacher.head.num_classes = len(TEACHER)
    teacher._scope_ = 'mmpretrain'
    distiller = MODELS.build(
        dict(
            type='mmdist.Distiller',
            student=student,
            teacher=teacher,
            teacher_ckpt=ckpt,
            student_classes=SHAPES,
            distill_terms=[dict(head='head')]))
    distiller.student.load_state_dict(built.state_dict())
    from helpers import cls_batch
    _check_identity(distiller, cls_batch(5, size=32))
    # teacher_acc compares the mapped columns with the student's labels.
    seen = []
    update = distiller.teacher_check.update
    distiller.teacher_check.update = lambda logits, *a: seen.append(
        logits) or update(logits, *a)
    log_vars = train_step(distiller, cls_batch(5, size=32))
    assert seen[0].shape == (4, 5) and 'teacher_acc' in log_vars


# --------------------------------------------- expansion, short and explicit
@pytest.fixture(scope='module')
def demo_pair():
    """Built demo students of 5 and 8 classes (no distiller)."""
    student = _demo_student()
    teacher = copy.deepcopy(student)
    teacher.bbox_head.num_classes = len(TEACHER)
    return MODELS.build(student), MODELS.build(teacher)


def _expand(terms, pair, student=SHAPES, teacher=TEACHER, notes=None):
    return expand_terms(
        terms,
        *pair,
        log=False,
        notes=notes,
        probe=False,
        class_names=ClassNames(student, teacher))


def test_short_form_maps_when_counts_differ_and_logs_what_is_dropped(
        demo_pair):
    notes = []
    (term, ) = _expand([dict(head='bbox_head')], demo_pair, notes=notes)
    assert term['teacher_columns'] == dict(
        columns=PERM, classes=8, background=False, combine='max')
    assert term['loss']['num_classes'] == 5  # the student's rows
    dropped = [n for n in notes if 'teacher classes dropped' in n]
    assert dropped and dropped[0].endswith('star, heart, moon')


def test_short_form_maps_when_names_differ_and_not_when_they_match(demo_pair):
    same = (demo_pair[0], demo_pair[0])
    (term, ) = _expand([dict(head='bbox_head')], same, SHAPES, SHAPES)
    assert 'teacher_columns' not in term
    (term, ) = _expand([dict(head='bbox_head')], same, SHAPES, SHAPES[::-1])
    assert term['teacher_columns']['columns'] == [4, 3, 2, 1, 0]
    # Unknown names and equal counts: as before, columns as they are.
    (term, ) = _expand([dict(head='bbox_head')], same, SHAPES, None)
    assert 'teacher_columns' not in term


def test_explicit_term_with_class_map_and_combine(demo_pair):
    (term, ) = _expand([
        dict(
            student_module='bbox_head.retina_cls',
            teacher_module='bbox_head.retina_cls',
            loss=dict(type='mmdist.KDLoss', activation='sigmoid'),
            class_map=dict(square=['square', 'star'], ring='moon'),
            class_combine='noisy_or')
    ], demo_pair)
    columns = term['teacher_columns']
    assert columns['columns'][0] == [2, 1] and columns['columns'][4] == 7
    assert columns['combine'] == 'noisy_or'
    assert 'class_map' not in term and 'class_combine' not in term


def test_class_map_on_features_is_refused(demo_pair):
    with pytest.raises(ValueError) as info:
        _expand([
            dict(
                student_module='neck',
                teacher_module='neck',
                loss=dict(type='mmdist.FeatureMSELoss'),
                class_map=dict(square='square'))
        ], demo_pair)
    assert 'not class' in str(info.value) and 'neck' in str(info.value)


def test_distiller_without_teacher_names_asks_for_class_map(demo_pair):
    with pytest.raises(ValueError) as info:
        _expand([dict(head='bbox_head')], demo_pair, SHAPES, None)
    message = str(info.value)
    assert 'predict 5 and 8 classes' in message
    assert 'class_map' in message and 'teacher_classes' in message


def test_two_stage_box_head_maps_with_background():
    cfg = Config.fromfile(str(CONFIGS / VOC_DIST))  # loads the mmdet scope
    init_default_scope('mmdet')
    base = Config.fromfile(
        Config._get_cfg_path(
            'mmdet::faster_rcnn/'
            'faster-rcnn_r50_fpn_1x_coco.py', '')[0]).model
    base.backbone.update(depth=18, init_cfg=None)
    base.neck.in_channels = [64, 128, 256, 512]
    student, teacher = copy.deepcopy(base), copy.deepcopy(base)
    student.roi_head.bbox_head.num_classes = 2
    teacher.roi_head.bbox_head.num_classes = 3
    (term, ) = expand_terms([dict(head='roi_head')],
                            MODELS.build(student),
                            MODELS.build(teacher),
                            log=False,
                            probe=False,
                            class_names=ClassNames(['cat', 'dog'],
                                                   ['dog', 'cat', 'cow']))
    assert term['teacher_columns'] == dict(
        columns=[1, 0], classes=3, background=True, combine='sum')
    del cfg
    mapping = ClassMapping(activation='softmax', **term['teacher_columns'])
    # dog .1, cat .2, cow .3, background .4: cat .2, dog .1, bg .3 + .4
    got = mapping(_logits([[0.1, 0.2, 0.3, 0.4]])).exp()
    assert torch.allclose(got, torch.tensor([[0.2, 0.1, 0.7]]), atol=1e-6)


# ------------------------------------------------------------ print_terms
def test_print_terms_shows_the_mapping(tmp_path, capsys, monkeypatch):
    config = tmp_path / 'subset_dist.py'
    config.write_text(
        f"_base_ = '{CONFIGS / 'demo' / 'det_student_dist.py'}'\n"
        "classes = ('ring', 'square', 'circle')\n"
        'model = dict(student=dict(bbox_head=dict(num_classes=3)),\n'
        "             teacher='{}', teacher_ckpt=None)\n".format(
            CONFIGS / 'demo' / 'det_teacher.py') +
        'train_dataloader = dict(dataset=dict(metainfo=dict('
        'classes=classes)))\n')
    spec = importlib.util.spec_from_file_location(
        'print_terms', REPO / 'tools' / 'misc' / 'print_terms.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, 'argv', ['print_terms.py', str(config)])
    tool.main()
    out = capsys.readouterr().out
    assert '5 teacher classes -> 3 student classes (sigmoid' in out
    assert 'teacher classes dropped (2): triangle, cross' in out
    assert "teacher_columns=dict(columns=[4, 0, 1], classes=5" in out


# ------------------------------------------------- the shipped VOC configs
def make_voc(root, images=2, size=(160, 120), seed=0):
    """VOC07 and VOC12 folders (JPEGImages, Annotations, ImageSets) with a
    few boxes of VOC classes per image."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    names = ('aeroplane', 'person', 'tvmonitor', 'sofa')
    for year in ('VOC2007', 'VOC2012'):
        base = root / year
        for sub in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
            (base / sub).mkdir(parents=True, exist_ok=True)
        ids = [f'{year}_{i:06d}' for i in range(images)]
        for image_id in ids:
            pixels = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)
            Image.fromarray(pixels).save(base / 'JPEGImages' /
                                         f'{image_id}.jpg')
            ann = ET.Element('annotation')
            box_size = ET.SubElement(ann, 'size')
            for key, value in (('width', size[0]), ('height', size[1]),
                               ('depth', 3)):
                ET.SubElement(box_size, key).text = str(value)
            for k in range(2):
                obj = ET.SubElement(ann, 'object')
                ET.SubElement(obj, 'name').text = names[(k + len(image_id)) %
                                                        len(names)]
                ET.SubElement(obj, 'difficult').text = '0'
                box = ET.SubElement(obj, 'bndbox')
                x0, y0 = 10 + 60 * k, 10 + 30 * k
                for key, value in (('xmin', x0), ('ymin', y0),
                                   ('xmax', x0 + 70), ('ymax', y0 + 60)):
                    ET.SubElement(box, key).text = str(value)
            ET.ElementTree(ann).write(base / 'Annotations' / f'{image_id}.xml')
        (base / 'ImageSets/Main/trainval.txt').write_text('\n'.join(ids))


def voc_batch(cfg, root, scale=None):
    """Two samples of the config's own training set (RepeatDataset of a
    ConcatDataset of VOC07 and VOC12) over generated data."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    for part in dataset.dataset.datasets:
        part.data_root = str(root) + '/'
        if scale is not None:
            for step in part.pipeline:
                if step.type == 'Resize':
                    step.scale = scale
    built = DATASETS.build(dataset)
    assert built.metainfo['classes'][0] == 'aeroplane'
    return pseudo_collate([built[0], built[len(built) - 1]])


def _voc_step(path, tmp_path, teacher=None, scale=None):
    cfg = load_offline(path)
    if teacher is not None:
        cfg.model.teacher = teacher
        # A small student too: the quick form checks the mapping.
        cfg.model.student.backbone.depth = 18
        cfg.model.student.neck.in_channels = [64, 128, 256, 512]
    model = build(cfg)  # student classes: VOCDataset.METAINFO
    (term, ) = model.terms
    assert term.class_mapping.classes == 80
    assert len(term.class_mapping.columns) == 20
    coco = config_classes(
        Config.fromfile(
            Config._get_cfg_path(
                'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', '')[0]))
    voc = config_classes(cfg)
    taken = [coco[c[0]] for c in term.class_mapping.columns]
    renamed = dict(cfg.voc_to_coco)
    assert taken == [renamed.get(v, v) for v in voc]
    make_voc(tmp_path / 'VOCdevkit')
    log_vars = train_step(model, voc_batch(cfg, tmp_path / 'VOCdevkit', scale))
    kind = 'dist' if path.endswith('_dist.py') else 'kd'
    assert torch.isfinite(log_vars[f'loss_{kind}'])
    assert float(log_vars[f'loss_{kind}']) > 0
    return model


def test_voc_config_maps_coco_with_a_small_coco_teacher(tmp_path):
    """Quick form: the shipped VOC config with R18 backbones, the teacher
    the R18 COCO RetinaNet (the same 80 COCO names), on small generated
    VOC images."""
    _voc_step(
        VOC_DIST,
        tmp_path,
        teacher='mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
        scale=(64, 48))


@pytest.mark.heavy
@pytest.mark.parametrize('path', [VOC_DIST, VOC_KD])
def test_shipped_voc_configs_take_a_step_on_voc_layout(path, tmp_path):
    _voc_step(path, tmp_path)


def test_shipped_voc_configs_state_the_six_renamed_classes():
    for path in (VOC_DIST, VOC_KD):
        cfg = Config.fromfile(str(CONFIGS / path))
        (term, ) = cfg.model.distill_terms
        assert term.class_map == dict(
            aeroplane='airplane',
            motorbike='motorcycle',
            sofa='couch',
            tvmonitor='tv',
            diningtable='dining table',
            pottedplant='potted plant')
        assert term.head == 'bbox_head'
