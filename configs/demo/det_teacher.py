# Demo detector (teacher): the student's RetinaNet, with a ResNet-34 twice
# as wide (base width 32) and a wider, deeper head.
_base_ = './det_student.py'
width = 32
model = dict(
    backbone=dict(depth=34, base_channels=width),
    neck=dict(in_channels=[width * 2, width * 4, width * 8], out_channels=128),
    bbox_head=dict(in_channels=128, feat_channels=128, stacked_convs=4))
