# Demo: KD sibling of seg_student_dist.py (identical but for the loss).
_base_ = './seg_student_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='decode_head.conv_seg',
        teacher_module='decode_head.conv_seg',
        loss=dict(type='mmdist.KDLoss', tau=1.0)),
    dict(
        student_module='auxiliary_head.conv_seg',
        teacher_module='auxiliary_head.conv_seg',
        name='kd_aux',
        loss=dict(type='mmdist.KDLoss', tau=1.0, loss_weight=0.4))
])
