# Vanilla KD sibling of retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py.
_base_ = './retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'

model = dict(distill_terms=[
    dict(head='bbox_head', loss=dict(type='mmdist.KDLoss', num_classes=None))
])
