# DIST: ResNet-152 -> ResNet-18 on ImageNet-1k (a much stronger teacher),
# recipe as resnet34_to_resnet18_8xb32_in1k_dist.py; see the README.
_base_ = [
    'mmpretrain::resnet/resnet18_8xb32_in1k.py', '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet152_8xb32_in1k.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/'
    'resnet152_8xb32_in1k_20210901-4d7582fa.pth',
    teacher_precision='float32',
    distill_terms=[
        dict(
            head='head',
            loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0))
    ])

optim_wrapper = dict(
    optimizer=dict(nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
