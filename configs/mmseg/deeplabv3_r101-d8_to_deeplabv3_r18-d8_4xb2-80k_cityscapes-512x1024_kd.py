# Vanilla KD sibling of
# deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py:
# identical but for the loss (softmax KD, tau = 1, auxiliary head at 0.4).
# Paper row: the paper's Cityscapes table compares other segmentation
# distillers; no KD number for this pair is copied here (see the paper).
_base_ = './deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024_dist.py'

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
