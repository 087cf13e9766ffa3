# DIST: Mask2Former Swin-L -> Mask2Former R50 on Cityscapes, MMSeg's 8xb2-90k.
# Rows are the teacher's queries, decoded by both decoders (README).
_base_ = [
    'mmseg::mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py',
    '../_base_/distill_runtime.py'
]

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmseg::mask2former/'
    'mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py',
    teacher_ckpt='https://download.openmmlab.com/mmsegmentation/v0.5/'
    'mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-'
    '512x1024/mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-'
    '512x1024_20221202_141901-28ad20f1.pth',
    distill_terms=[
        dict(head='decode_head', loss=dict(type='mmdist.DISTLoss'))
    ])
