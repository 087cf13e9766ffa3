# Vanilla KD sibling of atss_r101_to_r50_fpn_1x_coco_dist.py: identical but
# for the loss. Paper row: none ("not reported").
_base_ = './atss_r101_to_r50_fpn_1x_coco_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='bbox_head.atss_cls',
        teacher_module='bbox_head.atss_cls',
        loss=dict(type='mmdist.KDLoss', activation='sigmoid', tau=1.0))
])
