# Vanilla KD sibling of retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py:
# identical but for the loss (sigmoid KD, tau = 1).
# Paper row: the paper's COCO table compares other detection distillers;
# its KD number for this pair is not copied here (see the paper).
_base_ = './retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='bbox_head.retina_cls',
        teacher_module='bbox_head.retina_cls',
        loss=dict(type='mmdist.KDLoss', activation='sigmoid', tau=1.0))
])
