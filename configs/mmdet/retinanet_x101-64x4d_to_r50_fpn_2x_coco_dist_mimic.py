# DIST + feature mimicking: RetinaNet ResNeXt-101-64x4d (41.0 box AP) ->
# RetinaNet R50, 2x. Paper row (COCO val box AP), the authors' best
# RetinaNet row: 37.4 (student alone) -> 39.8 (DIST) -> 40.1 (DIST + mimic),
# from their `dist+mimic` detection configs:
# - the DIST term of the sibling config (sigmoid, all 9 x 80 channels of a
#   position one row, one loss per FPN level, summed);
# - every FPN level of the neck (5 levels, 256 channels) mimicked with MSE
#   (mean per level, levels summed, loss weight 1), the student's features
#   passed through one trainable 1x1 Conv2d(256, 256) with bias per level
#   (no normalisation, PyTorch's default initialisation);
# - 2x schedule, SGD lr 0.01 for 16 images (8 GPUs x 2), as MMDet's 2x.
# The teacher runs once per step: backbone, neck and its head.
# Teacher and student as in the sibling `_dist` config (MMDet zoo models
# with the paper's numbers). Deliberate differences: none known.
_base_ = './retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py'

model = dict(distill_terms=[
    dict(
        student_module='bbox_head.retina_cls',
        teacher_module='bbox_head.retina_cls',
        loss=dict(
            type='mmdist.DISTLoss',
            activation='sigmoid',
            beta=1.0,
            gamma=1.0,
            tau=1.0)),
    dict(
        student_module='neck',
        teacher_module='neck',
        name='mimic',
        connector=dict(
            type='mmdist.ConvConnector',
            in_channels=256,
            out_channels=256,
            num_levels=5),
        loss=dict(type='mmdist.FeatureMSELoss', loss_weight=1.0)),
])
optim_wrapper = dict(optimizer=dict(lr=0.01))
