# DIST: RetinaNet X101-64x4d -> RetinaNet R50-FPN on COCO, MMDet's 2x.
# Recipe, paper row and defaults: configs/mmdet/README.md.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_2x_coco.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdet::retinanet/retinanet_x101-64x4d_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/'
    'retinanet_x101_64x4d_fpn_1x_coco/'
    'retinanet_x101_64x4d_fpn_1x_coco_20200130-366f5af1.pth',
    teacher_precision='bf16',
    # num_classes=None: a row is all 9 x 80 channels of a position (authors').
    distill_terms=[
        dict(
            head='bbox_head',
            loss=dict(type='mmdist.DISTLoss', num_classes=None))
    ])
