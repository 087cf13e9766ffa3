# DIST: DINO 5-scale Swin-L 36e -> DINO 4-scale R50 on COCO, MMDet's 12e
# recipe. Shared distillation queries: configs/mmdet/README.md.
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmdet::dino/dino-5scale_swin-l_8xb2-36e_coco.py',
    teacher_ckpt='https://github.com/RistoranteRist/mmlab-weights/releases/'
    'download/dino-swinl/dino-5scale_swin-l_8xb2-36e_coco-5486e051.pth',
    teacher_precision='bf16',
    # The class branch of the last decoder layer on shared queries.
    distill_terms=[dict(head='bbox_head', loss=dict(type='mmdist.DISTLoss'))])
