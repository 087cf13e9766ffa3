# Student for the CIFAR-100 pair: MMPretrain's CIFAR ResNet-18 with a
# 100-class head, trained with the schedule of resnet50_8xb16_cifar100.
_base_ = [
    'mmpretrain::_base_/models/resnet18_cifar.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py'
]
model = dict(head=dict(num_classes=100))
optim_wrapper = dict(optimizer=dict(weight_decay=0.0005))
param_scheduler = dict(
    type='MultiStepLR', by_epoch=True, milestones=[60, 120, 160], gamma=0.2)
