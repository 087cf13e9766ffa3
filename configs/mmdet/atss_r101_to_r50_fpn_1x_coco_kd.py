# Vanilla KD sibling of atss_r101_to_r50_fpn_1x_coco_dist.py.
_base_ = './atss_r101_to_r50_fpn_1x_coco_dist.py'

model = dict(distill_terms=[
    dict(head='bbox_head', loss=dict(type='mmdist.KDLoss', num_classes=None))
])
