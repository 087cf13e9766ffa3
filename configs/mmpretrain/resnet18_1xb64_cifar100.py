# CIFAR ResNet-18 (100 classes) trained alone on the authors' CIFAR-100
# recipe: the baseline of resnet50_to_resnet18_1xb64_cifar100_{dist,kd}.py.
_base_ = [
    'mmpretrain::_base_/models/resnet18_cifar.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py'
]
model = dict(head=dict(num_classes=100))

train_dataloader = dict(batch_size=64)
val_dataloader = dict(batch_size=64)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(
        type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=False))
param_scheduler = dict(
    type='MultiStepLR', by_epoch=True, milestones=[150, 180, 210], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=240, val_interval=1)

# lr 0.05 is for 64 images per step; `--auto-scale-lr` scales from it.
auto_scale_lr = dict(base_batch_size=64)
