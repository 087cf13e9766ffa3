# Vanilla KD sibling of
# deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py.
_base_ = './deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py'  # noqa: E501

model = dict(distill_terms=[dict(loss=dict(type='mmdist.KDLoss'))])
