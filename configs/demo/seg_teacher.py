# Demo segmentor (teacher): DeepLabV3 (ASPP head) on a ResNetV1c-34 twice
# as wide as the student's (base width 32).
_base_ = './seg_student.py'
width = 32
model = dict(
    backbone=dict(depth=34, stem_channels=width, base_channels=width),
    decode_head=dict(
        _delete_=True,
        type='ASPPHead',
        in_channels=width * 8,
        in_index=3,
        channels=128,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(in_channels=width * 4, channels=64))
