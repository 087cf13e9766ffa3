# DIST: COCO RetinaNet X101-64x4d (80 classes) -> VOC RetinaNet R50-FPN (20),
# MMDet's VOC 1x. Recipe and class map: configs/mmdet/README.md.
_base_ = [
    'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py',
    '../_base_/distill_runtime.py'
]

# VOC names that COCO spells otherwise; the other 14 match by name.
voc_to_coco = dict(
    aeroplane='airplane',
    motorbike='motorcycle',
    sofa='couch',
    tvmonitor='tv',
    diningtable='dining table',
    pottedplant='potted plant')

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdet::retinanet/retinanet_x101-64x4d_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/'
    'retinanet_x101_64x4d_fpn_1x_coco/'
    'retinanet_x101_64x4d_fpn_1x_coco_20200130-366f5af1.pth',
    teacher_precision='bf16',
    # num_classes=None: a row is all 9 x 20 mapped channels of a position.
    distill_terms=[
        dict(
            head='bbox_head',
            loss=dict(type='mmdist.DISTLoss', num_classes=None),
            class_map=voc_to_coco)
    ])
