# Vanilla KD sibling of resnet34_to_resnet18_8xb32_in1k_dist.py (KD at
# tau = 4, as the paper compared): identical but for the loss.
# Paper row: ResNet-34 -> ResNet-18 KD, 71.21 top-1 (student alone 69.76).
_base_ = './resnet34_to_resnet18_8xb32_in1k_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='head.fc',
        teacher_module='head.fc',
        loss=dict(type='mmdist.KDLoss', tau=4.0))
])
