# Demo: the student distilled from the demo teacher with DIST on the
# classification conv of every FPN level (sigmoid, beta = gamma = tau = 1);
# the teacher in its fast form (bf16; float32 where bf16 is not native).
_base_ = './det_student.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdist::demo/det_teacher.py',
    teacher_ckpt='work_dirs/demo/det/teacher/iter_1000.pth',
    teacher_precision='bf16',
    distill_terms=[
        dict(
            student_module='bbox_head.retina_cls',
            teacher_module='bbox_head.retina_cls',
            loss=dict(
                type='mmdist.DISTLoss',
                activation='sigmoid',
                beta=1.0,
                gamma=1.0,
                tau=1.0))
    ])
