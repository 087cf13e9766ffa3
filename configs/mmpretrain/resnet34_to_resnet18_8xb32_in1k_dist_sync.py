# DIST with both terms over the global batch (sync=True), not per GPU;
# otherwise resnet34_to_resnet18_8xb32_in1k_dist.py. See the README.
_base_ = './resnet34_to_resnet18_8xb32_in1k_dist.py'

model = dict(distill_terms=[
    dict(
        head='head',
        loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0, sync=True))
])
