# Vanilla KD sibling of
# segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py.
_base_ = './segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py'  # noqa: E501

model = dict(
    distill_terms=[dict(head='decode_head', loss=dict(type='mmdist.KDLoss'))])
