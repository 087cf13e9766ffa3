# DIST: SegFormer MiT-B2 (81.08 mIoU in the MMSeg zoo), a transformer
# teacher, -> DeepLabV3 R18-d8 on Cityscapes. SegFormer's logits are at 1/4
# of the input, the student's at 1/8: the teacher's are resized (bilinear) to
# the student's. Every pixel of the decode head's logits is a row, the 19
# classes the columns; beta = gamma = 1, tau = 1; decode head only.
#
# Paper row: none ("not reported"); the paper has no transformer teacher for
# segmentation. A pair of MMSeg zoo models of our own; the student-alone
# baseline of this recipe is MMSeg's zoo DeepLabV3 R18-d8 (76.70).
#
# Recipe: MMSeg's Cityscapes 4xb2-80k recipe, kept: 80k iterations x 8
# images (4 GPUs x 2), SGD lr 0.01 momentum 0.9, weight decay 5e-4, poly
# decay, 512x1024 crops, ResNet-18-V1c backbone (ImageNet-pretrained,
# MMSeg's deep-stem variant); SyncBN on GPUs.
# Deliberate differences: none (no paper recipe to differ from); unlike the
# DeepLabV3-teacher configs the auxiliary head is not distilled (SegFormer
# has none).
# Teacher precision: bf16, the fast form (BatchNorm folded, channels_last,
# bf16 autocast; float32 outputs and losses). On an H200 the demo's trained
# RetinaNet and DeepLabV3 teachers scored the same in it as in float32
# (bbox mAP 76.2 vs 76.2, mIoU 40.32 vs 40.25:
# tools/analysis/trained_teacher_gpu.py; no trained two-stage or
# transformer teacher was checked there), and gpu_check.sh measured a
# ResNet-50 teacher 1.53x faster on 2 images of 1024x1024 (README, 'A fast
# teacher'). GPUs without bf16 (before Ampere) and CPUs without
# AVX512-BF16/AMX run it in float32 and log one line; --cfg-options
# model.teacher_precision=float32 gives the stock teacher.
_base_ = 'mmseg::deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='mmdist.Distiller',
    student={{_base_.model}},
    teacher='mmseg::segformer/segformer_mit-b2_8xb1-160k_cityscapes-1024x1024.py',
    teacher_ckpt='https://download.openmmlab.com/mmsegmentation/v0.5/segformer/segformer_mit-b2_8x1_1024x1024_160k_cityscapes/segformer_mit-b2_8x1_1024x1024_160k_cityscapes_20211207_134205-6096669a.pth',
    teacher_precision='bf16',
    distill_terms=[
        dict(
            student_module='decode_head.conv_seg',
            teacher_module='decode_head.conv_seg',
            resize_teacher=True,
            loss=dict(type='mmdist.DISTLoss', beta=1.0, gamma=1.0, tau=1.0))
    ])

# Smooth the logged DIST parts and the teacher's accuracy over the logging
# window like the losses, so that <name>_inter + <name>_intra = loss_<name>.
log_processor = dict(
    mean_pattern=r'.*(loss|time|data_time|grad_norm|_inter|_intra|teacher_acc).*')
