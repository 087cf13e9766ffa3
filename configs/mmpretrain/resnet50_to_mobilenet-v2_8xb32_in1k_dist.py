# DIST: ResNet-50 (76.55 top-1) -> MobileNetV2 on ImageNet.
# Each image is a row, the classes the columns; beta = gamma = 2, tau = 1.
_base_ = 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmpretrain::resnet/resnet50_8xb32_in1k.py',
    teacher_ckpt='https://download.openmmlab.com/mmclassification/v0/resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth',
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
