"""Head families: where each head type keeps its class logits.

One table, :data:`HEAD_FAMILIES`, says per head type which modules hold the
class logits, the activation the head is trained with and the row layout.
Everything that needs to know about a head reads it:

- the expansion of a short term (``dict(head='bbox_head', loss=...)``) into
  explicit terms (:mod:`mmdist.distillers.expand`);
- the teacher plan, for what a head's forward needs
  (:mod:`mmdist.distillers.adapters`: a cascade stage fed the previous
  stage's output);
- the refusal of heads whose outputs do not correspond row by row (query
  heads other than the DETR family, which is distilled through shared
  distillation queries: :mod:`mmdist.distillers.queries`);
- ``docs/en/user_guides/supported_models.md``
  (``.dev_scripts/supported_models.py``) and
  the family-by-family test (``tests/test_families.py``), which read
  :data:`ZOO` as well.

A head is looked up by its class name, then by the names of its base
classes (a ``RetinaHead`` subclass keeping ``retina_cls`` needs no entry).
Adding a family is one entry here, plus, if its forward needs more than
``head(features)``, that forward in the teacher plan.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

from torch import nn

#: What users are told to distil instead of a refused head.
INSTEAD = ('feature mimicking on the neck: dict(student_module="neck", '
           'teacher_module="neck", loss=dict(type="mmdist.FeatureMSELoss")) '
           '(with a mmdist.ConvConnector when the channels differ)')

_MATCHED = ('in each model separately, so {item} i of the student and {item} '
            'i of the teacher describe different {what}; rows of the two '
            'logit matrices do not correspond')
#: Why each query-based family that mmdist does not distil is refused.
_SPARSE_RCNN = ('its predictions are a set of learned proposal boxes and '
                'features, refined stage by stage and matched to the ground '
                'truth one to one (Hungarian matching) ' +
                _MATCHED.format(item='proposal', what='objects'))
_KNET = ('its class maps are per pixel (one kernel per class, no matching), '
         'but each stage\'s map is the first element of the tuple its '
         'kernel update head returns, and the head returns every stage in '
         'training and the last one in eval: mmdist has no module whose '
         'output is that map alone (not implemented yet)')
_SAN = ('its predictions are a set of learned mask proposals classified '
        'against CLIP text embeddings and matched to the ground-truth masks '
        'one to one (Hungarian matching) ' +
        _MATCHED.format(item='proposal', what='masks'))
#: What a DETR-family head needs to be distilled (an explicit term on it
#: without ``queries``).
QUERY_TERM = ('its predictions are a set of learned queries matched to the '
              'ground truth one to one (Hungarian matching) ' +
              _MATCHED.format(item='query', what='objects') +
              '. It is distilled through shared distillation queries: use '
              "the short form dict(head='<its slot>', loss=...) or add "
              'queries=dict() to the term')


@dataclass(frozen=True)
class HeadFamily:
    """One family of heads and where their class logits are.

    Args:
        name (str): Family name shown in logs and docs.
        heads (tuple[str]): Head class names this entry covers (subclasses
            are found through their bases).
        logits (tuple[str]): Paths, inside the head, of the modules whose
            outputs are the class logits. ``''`` is the head's own
            ``forward`` output (recorded with ``record_forward``); a path
            ending in ``?`` is optional (left out where the head has no such
            module). A path naming a ``ModuleList`` gives one term per
            element (one conv per FPN level).
        activation (str): ``'sigmoid'``, ``'softmax'``, or ``'loss'`` to
            read it from the head's classification loss (``use_sigmoid`` of
            ``loss_cls`` / ``loss_decode`` / ``loss_module``).
        rows (str): ``'anchor'``: dense ``(N, A*C, H, W)`` logits, a row per
            (image, anchor, position) over the ``C`` classes (``num_classes``
            set to the head's ``cls_out_channels``); ``'pixel'``: ``(N, C,
            H, W)``, a row per pixel; ``'instance'``: ``(N, C)``, a row per
            image or RoI.
        per_level (bool): ``logits`` names one module per level (a
            ``ModuleList``); documents what the expansion does.
        inner (str, optional): The class logits live in this sub-head, per
            stage when it is a list (RoI heads: ``bbox_head``).
        prev_output (bool): A cascade stage whose ``forward`` also takes the
            previous stage's output (OCRNet's ``OCRHead``).
        refused (str, optional): Why this head's logits cannot be distilled
            row by row; building a distiller that names it fails with it.
        skipped (str, optional): Why the short form leaves this head out (it
            predicts no classes); explicit terms may still name it.
        queries (bool): A DETR-family head: distilled through shared
            distillation queries (:mod:`mmdist.distillers.queries`), rows
            ``'query'`` (one per image and distillation query).
        note (str): Remark for the docs.
    """

    name: str
    heads: Tuple[str, ...]
    logits: Tuple[str, ...] = ()
    activation: str = 'loss'
    rows: str = 'pixel'
    per_level: bool = False
    inner: Optional[str] = None
    prev_output: bool = False
    refused: Optional[str] = None
    skipped: Optional[str] = None
    queries: bool = False
    note: str = ''


def _dense(name, heads, logits, **kwargs) -> HeadFamily:
    return HeadFamily(name, heads, (logits, ), rows='anchor', **kwargs)


HEAD_FAMILIES: Tuple[HeadFamily, ...] = (
    # -- MMDetection: dense heads -------------------------------------------
    _dense('RetinaNet', ('RetinaHead', 'RetinaSepBNHead', 'SABLRetinaHead'),
           'retina_cls'),
    _dense('ATSS', ('ATSSHead', 'DDODHead'), 'atss_cls'),
    _dense('FCOS', ('FCOSHead', 'FoveaHead', 'CenterNetUpdateHead'),
           'conv_cls'),
    _dense('GFL', ('GFLHead', ), 'gfl_cls'),
    _dense(
        'TOOD', ('TOODHead', ),
        'tood_cls',
        note='tood_cls logits; the head scores with their geometric mean '
        'with a class probability map'),
    _dense('VFNet', ('VFNetHead', ), 'vfnet_cls'),
    _dense('RTMDet', ('RTMDetHead', ), 'rtm_cls'),
    _dense(
        'RTMDet (separate BN)', ('RTMDetSepBNHead', ),
        'rtm_cls',
        per_level=True),
    _dense('YOLOX', ('YOLOXHead', ), 'multi_level_conv_cls', per_level=True),
    _dense(
        'SSD', ('SSDHead', ),
        'cls_convs',
        per_level=True,
        activation='softmax',
        note='softmax over the classes and background'),
    _dense(
        'YOLOF', ('YOLOFHead', ),
        'cls_score',
        note='cls_score logits, before the implicit objectness is added'),
    _dense('RepPoints', ('RepPointsHead', ), 'reppoints_cls_out'),
    _dense(
        'CenterNet', ('CenterNetHead', ), 'heatmap_head',
        activation='sigmoid'),
    _dense(
        'YOLACT', ('YOLACTHead', ),
        'conv_cls',
        note='softmax over the classes and background'),
    _dense('SOLO', ('SOLOHead', ), 'conv_cls'),
    HeadFamily(
        'YOLOv3', ('YOLOV3Head', ),
        refused='each level has one conv (convs_pred) whose channels mix box '
        'offsets, objectness and class scores for every anchor; no module '
        'gives the class logits alone'),
    HeadFamily(
        'Guided anchoring', ('GuidedAnchorHead', ),
        refused='in eval mode its masked cls conv scores only the positions '
        'its location branch keeps, so the teacher gives zeros elsewhere'),
    HeadFamily(
        'CornerNet', ('CornerHead', ),
        refused='corner heatmaps of stacked hourglass outputs, not one map '
        'of class logits per level'),
    HeadFamily(
        'Mask prototypes', ('YOLACTProtonet', 'CondInstMaskHead'),
        skipped='predicts mask prototypes or mask features, no classes'),
    HeadFamily(
        'Region proposals',
        ('RPNHead', 'StageCascadeRPNHead', 'CascadeRPNHead', 'GARPNHead'),
        skipped='objectness of proposals, not classes'),
    # -- MMDetection: query heads --------------------------------------------
    HeadFamily(
        'DETR family', ('DETRHead', ), ('', ),
        rows='query',
        queries=True,
        note='DETR, Deformable DETR, Conditional/DAB-DETR, DINO: the class '
        'branch of the last decoder layer on shared distillation queries '
        'that both decoders decode as a group of their own'),
    HeadFamily(
        'DDQ-DETR', ('DDQDETRHead', ),
        refused='its decoder selects distinct queries with a cache of the '
        'dense and sparse query split of its own step; shared distillation '
        'queries are not implemented for it, and its matched queries ' +
        _MATCHED.format(item='query', what='objects')),
    HeadFamily(
        'Sparse R-CNN / QueryInst',
        ('SparseRoIHead', 'EmbeddingRPNHead', 'DIIHead'),
        refused=_SPARSE_RCNN),
    HeadFamily(
        'MaskFormer / Mask2Former', ('MaskFormerHead', ), ('', ),
        rows='query',
        queries=True,
        note='MMDet panoptic_head and MMSeg decode_head: the class logits '
        '(classes and "no object") of the last decoder layer on the '
        "teacher's learned queries, which the student's transformer decoder "
        'decodes as a group of its own'),
    # -- MMDetection: two-stage -----------------------------------------------
    HeadFamily(
        'RoI head', ('StandardRoIHead', 'CascadeRoIHead'),
        inner='bbox_head',
        note='the teacher scores the student\'s sampled RoIs; cascades pair '
        'stage i with stage i (a one-stage side pairs the first stage)'),
    HeadFamily(
        'Box head', ('BBoxHead', ), ('fc_cls', ),
        rows='instance',
        note='softmax over the classes and background'),
    # -- MMSegmentation -------------------------------------------------------
    HeadFamily('Decode head', ('BaseDecodeHead', ), ('conv_seg', )),
    HeadFamily(
        'OCRNet stage', ('OCRHead', ), ('conv_seg', ),
        prev_output=True,
        note='cascade: the teacher runs the first stage and feeds its '
        'output to the OCR stage'),
    HeadFamily(
        'STDC boundary', ('STDCHead', ),
        skipped='predicts 2-channel boundary maps (detail guidance), not '
        'classes'),
    HeadFamily(
        'Segmenter', ('SegmenterMaskTransformerHead', ), ('', ),
        note='the class map is computed in forward() (no conv_seg): the '
        'head\'s own output is distilled'),
    HeadFamily(
        'PointRend point head', ('PointHead', ),
        refused='it scores points sampled at random (and by uncertainty) '
        'from the coarse prediction in every step; the teacher would score '
        'other points, so rows do not correspond. Its first stage '
        '(decode_head.0) is distilled'),
    HeadFamily(
        'K-Net', ('IterativeDecodeHead', 'KernelUpdateHead'), refused=_KNET),
    HeadFamily('SAN', ('SideAdapterCLIPHead', ), refused=_SAN),
    # -- MMPretrain -----------------------------------------------------------
    HeadFamily(
        'Linear', ('LinearClsHead', 'MultiLabelLinearClsHead'), ('fc', ),
        rows='instance'),
    HeadFamily(
        'Stacked linear', ('StackedLinearClsHead', ), ('layers.-1.fc', ),
        rows='instance',
        note='the fc of the last LinearBlock'),
    HeadFamily(
        'ViT', ('VisionTransformerClsHead', ), ('layers.head', ),
        rows='instance'),
    HeadFamily(
        'DeiT', ('DeiTClsHead', ), ('layers.head', 'layers.head_dist'),
        rows='instance'),
    HeadFamily(
        'EfficientFormer', ('EfficientFormerClsHead', ),
        ('head', 'dist_head?'),
        rows='instance'),
    HeadFamily(
        'LeViT', ('LeViTClsHead', ), ('head', 'head_dist?'), rows='instance'),
    HeadFamily(
        'Conformer', ('ConformerHead', ), ('conv_cls_head', 'trans_cls_head'),
        rows='instance'),
    HeadFamily(
        'Classifier head', ('ClsHead', 'MultiLabelClsHead'), ('', ),
        rows='instance',
        note='the head\'s own output'),
)

_BY_HEAD: Dict[str, HeadFamily] = {
    head: family
    for family in HEAD_FAMILIES
    for head in family.heads
}
assert len(_BY_HEAD) == sum(len(f.heads) for f in HEAD_FAMILIES), \
    'a head type is listed in two families'


def family_of(head: Union[nn.Module, type]) -> Optional[HeadFamily]:
    """The family of a head: by its class name, then its bases' names.

    Args:
        head (nn.Module | type): A head module or head class.

    Returns:
        HeadFamily | None: The first entry found along the MRO.
    """
    head_cls = head if isinstance(head, type) else type(head)
    for cls in head_cls.__mro__:
        family = _BY_HEAD.get(cls.__name__)
        if family is not None:
            return family
    return None


def head_activation(head: nn.Module, family: HeadFamily) -> str:
    """``'sigmoid'`` or ``'softmax'``: how this head was trained.

    Args:
        head (nn.Module): The head.
        family (HeadFamily): Its family.

    Returns:
        str: The activation for DIST/KD on its logits.
    """
    if family.activation != 'loss':
        return family.activation
    if getattr(head, 'use_sigmoid_cls', None) is not None:
        return 'sigmoid' if head.use_sigmoid_cls else 'softmax'
    for name in ('loss_cls', 'loss_decode', 'loss_module'):
        loss = getattr(head, name, None)
        if isinstance(loss, nn.ModuleList):
            loss = loss[0] if len(loss) else None
        if loss is None:
            continue
        if getattr(loss, 'use_sigmoid', False):
            return 'sigmoid'
        if getattr(loss, 'mode', None) == 'multi_label':  # LabelSmoothLoss
            return 'sigmoid'
        return 'softmax'
    if type(head).__name__.startswith('MultiLabel') or any(
            c.__name__ == 'MultiLabelClsHead' for c in type(head).__mro__):
        return 'sigmoid'
    return 'softmax'


@dataclass(frozen=True)
class Slot:
    """Where models keep a head (a top-level attribute).

    Args:
        name (str): Attribute name (``bbox_head``, ``decode_head``...).
        weight (float): Multiplier of the loss weight of the terms the
            short form expands for it. Defaults to 1.
        suffix (str): Added to the terms' names (``dist_aux``).
    """

    name: str
    weight: float = 1.0
    suffix: str = ''


#: The heads a short term may name, in expansion order. The auxiliary
#: heads get 0.4, the weight the DIST authors (and MMSeg's configs, for the
#: task loss) give them.
SLOTS: Tuple[Slot, ...] = (
    Slot('bbox_head'),
    Slot('roi_head'),
    Slot('mask_head'),
    Slot('panoptic_head'),
    Slot('decode_head'),
    Slot('auxiliary_head', weight=0.4, suffix='_aux'),
    Slot('head'),
)
SLOT_NAMES = tuple(slot.name for slot in SLOTS)


@dataclass(frozen=True)
class ZooModel:
    """A zoo config the family test runs and the docs list.

    Args:
        family (str): Display name (the zoo folder's model).
        config (str): ``package::path`` of the smallest zoo variant.
        heavy (bool): Slow on 2 CPU cores: marked ``heavy`` in the test.
        upstream (str, optional): Why the zoo model itself fails here
            (without mmdist), and what the test does about it.
        upstream_error (str, optional): A regex of the error the test
            expects from the zoo model (so a fix upstream shows up).
        ignored_labels (bool): Segmentation test batches hold pixels
            labelled 255. Defaults to True.
        input_size (tuple[int, int], optional): (H, W) of the test images,
            when the default is too small for the model.
    """

    family: str
    config: str
    heavy: bool = False
    upstream: Optional[str] = None
    upstream_error: Optional[str] = None
    input_size: Optional[Tuple[int, int]] = None
    ignored_labels: bool = True


def _det(family, path, **kwargs):
    return ZooModel(family, f'mmdet::{path}', **kwargs)


def _seg(family, path, **kwargs):
    return ZooModel(family, f'mmseg::{path}', **kwargs)


def _cls(family, path, **kwargs):
    return ZooModel(family, f'mmpretrain::{path}', **kwargs)


#: One zoo config per model family of the installed packages.
ZOO: Tuple[ZooModel, ...] = (
    # MMDetection, one-stage
    _det('RetinaNet', 'retinanet/retinanet_r18_fpn_1x_coco.py'),
    _det('FCOS', 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'),
    _det('ATSS', 'atss/atss_r50_fpn_1x_coco.py'),
    _det('GFL', 'gfl/gfl_r50_fpn_1x_coco.py'),
    _det('TOOD', 'tood/tood_r50_fpn_1x_coco.py'),
    _det('PAA', 'paa/paa_r50_fpn_1x_coco.py'),
    _det('VFNet', 'vfnet/vfnet_r50_fpn_1x_coco.py'),
    _det('FoveaBox', 'foveabox/fovea_r50_fpn_4xb4-1x_coco.py'),
    # Deformable convs in the head: mmcv's CPU op needs P7 to be at least
    # as large as the 3x3 kernel (inputs of 384).
    _det(
        'DDOD',
        'ddod/ddod_r50_fpn_1x_coco.py',
        input_size=(384, 384),
        heavy=True),
    _det('AutoAssign', 'autoassign/autoassign_r50-caffe_fpn_1x_coco.py'),
    _det('FSAF', 'fsaf/fsaf_r50_fpn_1x_coco.py'),
    _det('FreeAnchor', 'free_anchor/freeanchor_r50_fpn_1x_coco.py'),
    _det(
        'NAS-FCOS',
        'nas_fcos/nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py',
        input_size=(384, 384),
        heavy=True),
    _det('CenterNet', 'centernet/centernet_r18_8xb16-crop512-140e_coco.py'),
    _det(
        'RepPoints',
        'reppoints/reppoints-moment_r50_fpn_1x_coco.py',
        input_size=(384, 384),
        heavy=True),
    _det('YOLOF', 'yolof/yolof_r50-c5_8xb8-1x_coco.py'),
    _det('RTMDet', 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py'),
    _det('YOLOX', 'yolox/yolox_tiny_8xb8-300e_coco.py'),
    _det(
        'SSD',
        'ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
        upstream='mmdet 3.3.0 SSDHead._predict_by_feat_single reads '
        'self.loss_cls, which SSDHead never builds: predict fails (the '
        'test checks that it still does)',
        upstream_error='loss_cls'),
    _det('YOLOv3', 'yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py'),
    _det('YOLACT', 'yolact/yolact_r50_1xb8-55e_coco.py'),
    _det('SOLO', 'solo/solo_r50_fpn_1x_coco.py'),
    # MMDetection, two-stage (the box heads are one family; Faster R-CNN
    # runs in the fast suite, a Cascade teacher on it in tests/test_expand.py)
    _det('Faster R-CNN', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'),
    _det('Mask R-CNN', 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', heavy=True),
    _det(
        'Cascade R-CNN',
        'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
        heavy=True),
    _det(
        'Double-Head R-CNN',
        'double_heads/dh-faster-rcnn_r50_fpn_1x_coco.py',
        heavy=True),
    _det(
        'Grid R-CNN',
        'grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py',
        heavy=True),
    _det(
        'Libra R-CNN',
        'libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py',
        heavy=True),
    _det(
        'Dynamic R-CNN',
        'dynamic_rcnn/dynamic-rcnn_r50_fpn_1x_coco.py',
        heavy=True),
    _det('HTC', 'htc/htc-without-semantic_r50_fpn_1x_coco.py', heavy=True),
    # MMDetection, query-based (the DETR family through shared queries)
    _det('DETR', 'detr/detr_r18_8xb2-500e_coco.py'),
    _det('Deformable DETR',
         'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'),
    _det('Conditional DETR',
         'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py'),
    _det('DAB-DETR', 'dab_detr/dab-detr_r50_8xb2-50e_coco.py'),
    # Its two-stage top-k takes 900 encoder tokens: inputs of at least 208.
    _det(
        'DINO', 'dino/dino-4scale_r50_8xb2-12e_coco.py',
        input_size=(256, 256)),
    _det('DDQ-DETR', 'ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py'),
    _det('Sparse R-CNN', 'sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py'),
    # Shared-query heads: a transformer decoder decoded twice per step.
    _det(
        'Mask2Former (MMDet)',
        'mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
        heavy=True),
    _det(
        'MaskFormer (MMDet)',
        'maskformer/maskformer_r50_ms-16xb1-75e_coco.py',
        heavy=True),
    # MMSegmentation
    _seg('FCN', 'fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py'),
    _seg('PSPNet', 'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py'),
    _seg('DeepLabV3',
         'deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py'),
    _seg('DeepLabV3+',
         'deeplabv3plus/deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024.py'),
    _seg('UPerNet', 'upernet/upernet_r18_4xb2-80k_cityscapes-512x1024.py'),
    _seg('SegFormer',
         'segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'),
    # Its cascade is also trained in tests/test_expand.py (not heavy).
    _seg(
        'OCRNet',
        'ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py',
        heavy=True),
    _seg(
        'PointRend',
        'point_rend/pointrend_r50_4xb2-80k_cityscapes-512x1024.py',
        heavy=True),
    _seg('BiSeNetV1',
         'bisenetv1/bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024.py'),
    _seg('BiSeNetV2',
         'bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py'),
    _seg('STDC', 'stdc/stdc1_4xb12-80k_cityscapes-512x1024.py'),
    # Its head pools with a 49x49 kernel at 1/8: inputs of at least 392.
    _seg(
        'LRASPP', 'mobilenet_v3/'
        'mobilenet-v3-d8_lraspp_4xb4-320k_cityscapes-512x1024.py',
        input_size=(400, 400),
        heavy=True),
    _seg('SegNeXt',
         'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'),
    _seg('Segmenter',
         'segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py'),
    _seg('DPT', 'dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py', heavy=True),
    _seg(
        'SETR',
        'setr/setr_vit-l_naive_8xb1-80k_cityscapes-768x768.py',
        heavy=True),
    _seg('ISANet', 'isanet/isanet_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    _seg('DANet', 'danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    _seg('CCNet', 'ccnet/ccnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'),
    _seg('Fast-SCNN', 'fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py'),
    _seg('ICNet', 'icnet/icnet_r18-d8_4xb2-80k_cityscapes-832x832.py'),
    _seg('DDRNet',
         'ddrnet/ddrnet_23-slim_in1k-pre_2xb6-120k_cityscapes-1024x1024.py'),
    _seg(
        'PIDNet',
        'pidnet/pidnet-s_2xb6-120k_1024x1024-cityscapes.py',
        upstream='mmseg 1.2.2 cross_entropy with class_weight indexes the '
        'weights with the ignore label when averaging (IndexError on a '
        'batch with pixels labelled 255); the test uses labels without '
        'ignored pixels',
        ignored_labels=False),
    _seg('K-Net', 'knet/knet-s3_r50-d8_fcn_8xb2-adamw-80k_ade20k-512x512.py'),
    _seg(
        'Mask2Former (MMSeg)',
        'mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py',
        heavy=True),
    _seg(
        'MaskFormer (MMSeg)',
        'maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py',
        heavy=True),
    # MMPretrain
    _cls('ResNet (Linear)', 'resnet/resnet18_8xb32_in1k.py'),
    _cls('MobileNetV3 (StackedLinear)',
         'mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py'),
    _cls(
        'ViT',
        'vision_transformer/vit-base-p16_32xb128-mae_in1k.py',
        heavy=True),
    _cls('DeiT', 'deit/deit-tiny-distilled_4xb256_in1k.py'),
    _cls(
        'EfficientFormer',
        'efficientformer/efficientformer-l1_8xb128_in1k.py',
        input_size=(224, 224),  # fixed 7x7 attention biases
        upstream='MMPretrain 1.2.0 refuses to train the distilled '
        'EfficientFormerClsHead (distillation=True) its zoo configs build '
        '(NotImplementedError in the training step; set '
        'model.head.distillation=False to train it)',
        upstream_error='distilled version EfficientFormer'),
    _cls(
        'Conformer', 'conformer/conformer-tiny-p16_8xb128_in1k.py',
        heavy=True),
    _cls(
        'Multi-label (CSRA)',
        'csra/resnet101-csra_1xb16_voc07-448px.py',
        heavy=True),
)
