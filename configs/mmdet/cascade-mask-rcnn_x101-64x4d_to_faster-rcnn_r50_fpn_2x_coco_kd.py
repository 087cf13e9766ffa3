# Vanilla KD sibling of
# cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_coco_dist.py:
# identical but for the loss (softmax KD over 81 columns, tau = 1).
# Paper row: the paper's COCO table compares other detection distillers;
# its KD number for this pair is not copied here (see the paper).
_base_ = './cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_coco_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='roi_head.bbox_head.fc_cls',
        teacher_module='roi_head.bbox_head.0.fc_cls',
        loss=dict(type='mmdist.KDLoss', activation='softmax', tau=1.0))
])
