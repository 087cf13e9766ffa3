# DIST: ATSS R101 -> ATSS R50-FPN on COCO, MMDet's 1x recipe.
# Recipe, paper row and defaults: configs/mmdet/README.md.
_base_ = [
    'mmdet::atss/atss_r50_fpn_1x_coco.py', '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdet::atss/atss_r101_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/atss/'
    'atss_r101_fpn_1x_coco/atss_r101_fpn_1x_20200825-dfcadd6f.pth',
    teacher_precision='bf16',
    # num_classes=None: a row is every channel of a position (authors').
    distill_terms=[
        dict(
            head='bbox_head',
            loss=dict(type='mmdist.DISTLoss', num_classes=None))
    ])
