# Vanilla KD sibling of
# cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_coco_dist.py.
_base_ = './cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_coco_dist.py'  # noqa: E501

model = dict(
    distill_terms=[dict(head='roi_head', loss=dict(type='mmdist.KDLoss'))])
