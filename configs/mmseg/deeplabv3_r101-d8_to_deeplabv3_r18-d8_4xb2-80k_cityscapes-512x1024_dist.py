# DIST: DeepLabV3 R101-d8 -> DeepLabV3 R18-d8 on Cityscapes, MMSeg's 4xb2-80k.
# Decode and auxiliary heads (weight 0.4); see configs/mmseg/README.md.
_base_ = [
    'mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmseg::deeplabv3/'
    'deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py',
    teacher_ckpt='https://download.openmmlab.com/mmsegmentation/v0.5/'
    'deeplabv3/deeplabv3_r101-d8_512x1024_80k_cityscapes/'
    'deeplabv3_r101-d8_512x1024_80k_cityscapes_20200606_113503-9e428899.pth',
    teacher_precision='bf16',
    distill_terms=[dict(loss=dict(type='mmdist.DISTLoss'))])
