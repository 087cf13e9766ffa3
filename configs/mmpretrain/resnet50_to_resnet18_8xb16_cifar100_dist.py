# DIST on CIFAR-100: ResNet-50 (79.9 top-1) -> CIFAR ResNet-18, tau=4 as in
# the paper's CIFAR-100 setting.
# Each image is a row, the classes the columns; beta = gamma = 2, tau = 4.
_base_ = './resnet18_8xb16_cifar100.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet50_8xb16_cifar100.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/resnet50_b16x8_cifar100_20210528-67b58a1b.pth',
    distill_terms=[
        dict(
            student_module='head.fc',
            teacher_module='head.fc',
            loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0, tau=4.0))
    ])

# Smooth the logged DIST parts and the teacher's accuracy over the logging
# window like the losses, so that <name>_inter + <name>_intra = loss_<name>.
log_processor = dict(
    mean_pattern=r'.*(loss|time|data_time|grad_norm|_inter|_intra|teacher_acc).*')
