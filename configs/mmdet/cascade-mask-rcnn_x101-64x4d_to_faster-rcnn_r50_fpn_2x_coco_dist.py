# DIST: Cascade Mask R-CNN X101-64x4d -> Faster R-CNN R50-FPN, COCO 2x.
# The teacher's first stage scores the student's RoIs; see the README.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_2x_coco.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdet::cascade_rcnn/cascade-mask-rcnn_x101-64x4d_fpn_20e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/'
    'cascade_rcnn/cascade_mask_rcnn_x101_64x4d_fpn_20e_coco/'
    'cascade_mask_rcnn_x101_64x4d_fpn_20e_coco_20200512_161033-bdb5126a.pth',
    teacher_precision='bf16',
    distill_terms=[dict(head='roi_head', loss=dict(type='mmdist.DISTLoss'))])
