# Demo: the segmentation student distilled from the demo teacher with DIST
# on the decode head's logits (and the auxiliary head's, weight 0.4).
# The teacher runs in its fast form (teacher_precision='bf16': BatchNorm
# folded, channels_last, bf16 autocast), measured on a CPU with AVX512-BF16
# to teach what the float32 teacher teaches (README, 'A fast teacher');
# hardware without native bf16 runs it in float32 and logs one line.
_base_ = './seg_student.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdist::demo/seg_teacher.py',
    teacher_ckpt='work_dirs/demo/seg/teacher/iter_500.pth',
    teacher_precision='bf16',
    distill_terms=[
        dict(
            student_module='decode_head.conv_seg',
            teacher_module='decode_head.conv_seg',
            loss=dict(type='mmdist.DISTLoss', beta=1.0, gamma=1.0, tau=1.0)),
        dict(
            student_module='auxiliary_head.conv_seg',
            teacher_module='auxiliary_head.conv_seg',
            name='dist_aux',
            loss=dict(
                type='mmdist.DISTLoss',
                beta=1.0,
                gamma=1.0,
                tau=1.0,
                loss_weight=0.4))
    ])

# Smooth the logged DIST parts and the teacher's accuracy over the logging
# window like the losses, so that <name>_inter + <name>_intra = loss_<name>.
log_processor = dict(
    mean_pattern=r'.*(loss|time|data_time|grad_norm|_inter|_intra|teacher_acc).*')
