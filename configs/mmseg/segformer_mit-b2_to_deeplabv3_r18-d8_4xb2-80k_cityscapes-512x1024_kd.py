# Vanilla KD sibling of
# segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py:
# identical but for the loss. Paper row: none ("not reported").
_base_ = './segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='decode_head.conv_seg',
        teacher_module='decode_head.conv_seg',
        resize_teacher=True,
        loss=dict(type='mmdist.KDLoss', tau=1.0))
])
