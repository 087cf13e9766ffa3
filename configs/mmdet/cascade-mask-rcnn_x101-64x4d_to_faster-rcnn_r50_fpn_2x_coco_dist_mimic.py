# DIST + feature mimicking on every FPN level (the authors' dist+mimic row).
# Teacher, student and recipe as the sibling _dist config; see the README.
_base_ = './cascade-mask-rcnn_x101-64x4d_to_faster-rcnn_r50_fpn_2x_coco_dist.py'  # noqa: E501

model = dict(distill_terms=[
    dict(head='roi_head', loss=dict(type='mmdist.DISTLoss')),
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
optim_wrapper = dict(optimizer=dict(lr=0.02))
