# DIST: SegFormer MiT-B2 -> DeepLabV3 R18-d8 on Cityscapes, MMSeg's 4xb2-80k.
# The short form resizes the teacher's 1/4-scale logits to the student's 1/8.
_base_ = [
    'mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmseg::segformer/'
    'segformer_mit-b2_8xb1-160k_cityscapes-1024x1024.py',
    teacher_ckpt='https://download.openmmlab.com/mmsegmentation/v0.5/'
    'segformer/segformer_mit-b2_8x1_1024x1024_160k_cityscapes/'
    'segformer_mit-b2_8x1_1024x1024_160k_cityscapes_20211207_134205-'
    '6096669a.pth',
    teacher_precision='bf16',
    distill_terms=[
        dict(head='decode_head', loss=dict(type='mmdist.DISTLoss'))
    ])
