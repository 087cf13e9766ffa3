# DIST: ResNet-50 -> MobileNetV2 on ImageNet-1k, MMPretrain's MobileNetV2
# recipe unchanged; see configs/mmpretrain/README.md.
_base_ = [
    'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet50_8xb32_in1k.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/'
    'resnet50_8xb32_in1k_20210831-ea4938fc.pth',
    teacher_precision='float32',
    distill_terms=[
        dict(
            head='head',
            loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0))
    ])
