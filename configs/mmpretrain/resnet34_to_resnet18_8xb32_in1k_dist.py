# DIST: ResNet-34 -> ResNet-18 on ImageNet-1k, MMPretrain's recipe plus the
# authors' Nesterov momentum and decay exemptions; see the README.
_base_ = [
    'mmpretrain::resnet/resnet18_8xb32_in1k.py', '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet34_8xb32_in1k.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/'
    'resnet34_8xb32_in1k_20210831-f257d4e6.pth',
    teacher_precision='float32',
    distill_terms=[
        dict(
            head='head',
            loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0))
    ])

optim_wrapper = dict(
    optimizer=dict(nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
