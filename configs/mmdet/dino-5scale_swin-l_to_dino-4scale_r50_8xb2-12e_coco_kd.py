# Vanilla KD sibling of the _dist config of this pair.
_base_ = './dino-5scale_swin-l_to_dino-4scale_r50_8xb2-12e_coco_dist.py'

model = dict(
    distill_terms=[dict(head='bbox_head', loss=dict(type='mmdist.KDLoss'))])
