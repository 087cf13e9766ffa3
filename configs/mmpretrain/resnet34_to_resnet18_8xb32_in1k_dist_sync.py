# DIST with a global-batch intra-class term: ResNet-34 -> ResNet-18 on
# ImageNet-1k, as `resnet34_to_resnet18_8xb32_in1k_dist.py` (same recipe)
# but with `sync=True` on the DIST loss.
#
# Paper row: none. This departs from the paper's per-GPU statistic.
#
# Deliberate differences (besides those of the base config): the authors
# compute both DIST terms per GPU, so each class is correlated over one
# GPU's 32 images; with sync=True both terms are computed over the whole
# 8 x 32 = 256-image batch of all processes (exactly what one process would
# compute on it), at the cost of two all-reduces of about 7 x 1000 float64
# numbers per step. No accuracy of ours for it yet.
_base_ = './resnet34_to_resnet18_8xb32_in1k_dist.py'

# A config's list replaces its base's, so the term is restated: identical
# to the base's but for `sync=True`.
model = dict(distill_terms=[
    dict(
        student_module='head.fc',
        teacher_module='head.fc',
        loss=dict(
            type='mmdist.DISTLoss', beta=2.0, gamma=2.0, tau=1.0, sync=True))
])
