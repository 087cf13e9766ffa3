# Vanilla KD sibling of resnet152_to_resnet18_8xb32_in1k_dist.py (tau = 4).
_base_ = './resnet152_to_resnet18_8xb32_in1k_dist.py'

model = dict(distill_terms=[
    dict(head='head', loss=dict(type='mmdist.KDLoss', tau=4.0))
])
