# DIST with both terms over the global batch (sync=True), not per GPU;
# otherwise retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py. See the README.
_base_ = './retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'

model = dict(distill_terms=[
    dict(
        head='bbox_head',
        loss=dict(type='mmdist.DISTLoss', num_classes=None, sync=True))
])
