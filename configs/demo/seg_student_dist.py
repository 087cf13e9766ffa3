# Demo: the segmentation student distilled from the demo teacher with DIST
# on the decode head's logits (and the auxiliary head's, weight 0.4);
# the teacher in its fast form (bf16; float32 where bf16 is not native).
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
