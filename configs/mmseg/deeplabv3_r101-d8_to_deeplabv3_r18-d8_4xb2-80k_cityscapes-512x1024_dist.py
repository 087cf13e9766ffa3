# DIST: DeepLabV3 R101-d8 (80.2 mIoU in the MMSeg zoo) -> DeepLabV3 R18-d8.
# The paper reports 74.21 -> 77.10 mIoU (teacher 78.07).
# Every pixel of the decode head's logits is a row, the 19 classes the
# columns; the auxiliary head is distilled too, with weight 0.4, as the authors did.
_base_ = 'mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmseg::deeplabv3/deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py',
    teacher_ckpt='https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3/deeplabv3_r101-d8_512x1024_80k_cityscapes/deeplabv3_r101-d8_512x1024_80k_cityscapes_20200606_113503-9e428899.pth',
    distill_terms=[
        dict(
            student_module='decode_head.conv_seg',
            teacher_module='decode_head.conv_seg',
            loss=dict(type='mmdist.DISTLoss', beta=1.0, gamma=1.0, tau=1.0)),
        dict(
            student_module='auxiliary_head.conv_seg',
            teacher_module='auxiliary_head.conv_seg',
            name='dist_aux',
            loss=dict(type='mmdist.DISTLoss', beta=1.0, gamma=1.0, tau=1.0, loss_weight=0.4))
    ])

# Smooth the logged DIST parts and the teacher's accuracy over the logging
# window like the losses, so that <name>_inter + <name>_intra = loss_<name>.
log_processor = dict(
    mean_pattern=r'.*(loss|time|data_time|grad_norm|_inter|_intra|teacher_acc).*')
