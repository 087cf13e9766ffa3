# DIST on CIFAR-100: ResNet-50 -> CIFAR ResNet-18, tau = 4, beta = gamma = 2,
# on the authors' CIFAR recipe (resnet18_1xb64_cifar100.py); see the README.
_base_ = ['./resnet18_1xb64_cifar100.py', '../_base_/distill_runtime.py']

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet50_8xb16_cifar100.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/'
    'resnet50_b16x8_cifar100_20210528-67b58a1b.pth',
    teacher_precision='float32',
    distill_terms=[
        dict(
            head='head',
            loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0, tau=4.0))
    ])
