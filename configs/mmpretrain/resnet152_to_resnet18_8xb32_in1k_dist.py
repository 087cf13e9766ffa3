# DIST with a much stronger teacher: ResNet-152 (78.48 top-1) -> ResNet-18.
# The paper: DIST stays at about 72.1-72.2 with R50/R101/R152 teachers while
# KD stays at about 71.1-71.35.
# Each image is a row, the classes the columns; beta = gamma = 2, tau = 1.
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet152_8xb32_in1k.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/resnet152_8xb32_in1k_20210901-4d7582fa.pth',
    distill_terms=[
        dict(
            student_module='head.fc',
            teacher_module='head.fc',
            loss=dict(type='mmdist.DISTLoss', beta=2.0, gamma=2.0, tau=1.0))
    ])

# Smooth the logged DIST parts and the teacher's accuracy over the logging
# window like the losses, so that <name>_inter + <name>_intra = loss_<name>.
log_processor = dict(
    mean_pattern=r'.*(loss|time|data_time|grad_norm|_inter|_intra|teacher_acc).*')
