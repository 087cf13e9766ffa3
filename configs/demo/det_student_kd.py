# Demo: KD sibling of det_student_dist.py (identical but for the loss).
_base_ = './det_student_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='bbox_head.retina_cls',
        teacher_module='bbox_head.retina_cls',
        loss=dict(type='mmdist.KDLoss', activation='sigmoid', tau=1.0))
])
