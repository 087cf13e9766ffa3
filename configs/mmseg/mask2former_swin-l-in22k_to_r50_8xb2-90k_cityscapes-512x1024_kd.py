# Vanilla KD sibling of
# mask2former_swin-l-in22k_to_r50_8xb2-90k_cityscapes-512x1024_dist.py.
_base_ = './mask2former_swin-l-in22k_to_r50_8xb2-90k_cityscapes-512x1024_dist.py'  # noqa: E501

model = dict(
    distill_terms=[dict(head='decode_head', loss=dict(type='mmdist.KDLoss'))])
