# Vanilla KD sibling of resnet50_to_mobilenet-v2_8xb32_in1k_dist.py (KD at
# tau = 4, as the paper compared): identical but for the loss.
# Paper row: none ("not reported"); see the DIST config.
_base_ = './resnet50_to_mobilenet-v2_8xb32_in1k_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='head.fc',
        teacher_module='head.fc',
        loss=dict(type='mmdist.KDLoss', tau=4.0))
])
