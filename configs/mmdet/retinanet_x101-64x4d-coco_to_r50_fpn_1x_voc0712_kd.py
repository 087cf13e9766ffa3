# Vanilla KD sibling of the VOC <- COCO RetinaNet DIST config.
_base_ = './retinanet_x101-64x4d-coco_to_r50_fpn_1x_voc0712_dist.py'

model = dict(distill_terms=[
    dict(
        head='bbox_head',
        loss=dict(type='mmdist.KDLoss', num_classes=None),
        class_map={{_base_.voc_to_coco}})
])
