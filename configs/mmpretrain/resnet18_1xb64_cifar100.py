# Student for the CIFAR-100 pair, trained alone: MMPretrain's CIFAR
# ResNet-18 with a 100-class head, on the recipe of the authors' CIFAR-100
# experiments, so that it is the baseline of
# resnet50_to_resnet18_1xb64_cifar100_{dist,kd}.py:
# - one GPU, 64 images per batch (1xb64);
# - 240 epochs, SGD momentum 0.9 (no Nesterov), weight decay 5e-4;
# - lr 0.05, held to epoch 150, then x0.1 at epochs 150, 180 and 210.
# MMPretrain's data pipeline (random crop 32 with padding 4, horizontal
# flip) and normalisation (CIFAR-100 mean/std) are kept.
# MMPretrain has no CIFAR-100 ResNet-18 in its zoo: there is no zoo number
# for this model. Paper row: none ("not reported"); the paper's CIFAR-100
# students are other architectures.
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
        type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4,
        nesterov=False))
param_scheduler = dict(
    type='MultiStepLR',
    by_epoch=True,
    milestones=[150, 180, 210],
    gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=240, val_interval=1)

# lr 0.05 is for 64 images per step (one GPU); `--auto-scale-lr` scales it
# from this batch size.
auto_scale_lr = dict(base_batch_size=64)
