"""Two processes (gloo) train the same student as one process that sees the
same global batch as two micro-batches with gradient accumulation.

DDP averages the two ranks' gradients; ``accumulative_counts=2`` averages
the two micro-batches' gradients. BatchNorm and DIST's intra-class term are
per process (per micro-batch), so the single process is given the samples in
the order the distributed sampler deals them to the ranks (rank r takes
every other sample): micro-batch k of the single run is then exactly rank
k's batch, and the student weights must agree up to floating-point
reduction order: within ``REDUCTION_ORDER_BOUND`` of how far each tensor
moved (``tests/helpers.py``), from one initial checkpoint both runs load.
"""
import random

import pytest
import torch
from mmengine.config import Config

from helpers import (REDUCTION_ORDER_BOUND, run_tool, save_initial_student,
                     weight_gap)
from test_e2e_classification import tiny_classification_config

STEPS = 3
PER_RANK = 2


def write_ann_file(root, path, order):
    """An MMPretrain annotation file (``path label`` lines) in ``order``."""
    classes = sorted(p.name for p in (root / 'train').iterdir())
    samples = [(f'{c}/{f.name}', i) for i, c in enumerate(classes)
               for f in sorted((root / 'train' / c).iterdir())]
    path.write_text(''.join(f'{samples[i][0]} {samples[i][1]}\n'
                            for i in order))
    return len(samples)


def fixed_order_config(base,
                       root,
                       ann_file,
                       batch_size,
                       iters,
                       lr,
                       path,
                       accumulate=1,
                       load_from=None):
    """A copy of the tiny classification config that reads ``ann_file`` in
    order (no shuffling, no random augmentation), trains ``iters`` steps
    with SGD at ``lr`` and saves one checkpoint at the end; written to
    ``path``."""
    cfg = Config.fromfile(str(base))
    loader = cfg.train_dataloader
    loader.batch_size = batch_size
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    loader.dataset.ann_file = str(ann_file)
    loader.dataset.data_prefix = str(root / 'train')
    loader.dataset.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=64, edge='short'),
        dict(type='CenterCrop', crop_size=64),
        dict(type='PackInputs')
    ]
    cfg.train_cfg = dict(by_epoch=False, max_iters=iters, val_interval=1000)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.optim_wrapper = dict(
        optimizer=dict(type='SGD', lr=lr, momentum=0.9),
        accumulative_counts=accumulate)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=iters, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.load_from = None if load_from is None else str(load_from)
    cfg.dump(str(path))
    return path


@pytest.mark.heavy
def test_two_processes_match_one_with_accumulation(tmp_path):
    base = tiny_classification_config(tmp_path)
    root = tmp_path / 'imagenet'
    total = STEPS * 2 * PER_RANK
    natural = tmp_path / 'natural.txt'
    count = write_ann_file(root, natural, range(total))
    assert count >= total
    # DefaultSampler(shuffle=False) gives rank r the samples r, r+2, ...;
    # step s of rank r takes its s-th pair.
    dealt = [
        i for s in range(STEPS) for r in (0, 1)
        for i in range(r, total, 2)[s * PER_RANK:(s + 1) * PER_RANK]
    ]
    interleaved = tmp_path / 'interleaved.txt'
    write_ann_file(root, interleaved, dealt)

    init = tmp_path / 'init.pth'
    start = save_initial_student(Config.fromfile(str(base)), init)
    two = fixed_order_config(
        base,
        root,
        natural,
        PER_RANK,
        STEPS,
        0.05,
        tmp_path / 'two_processes.py',
        load_from=init)
    one = fixed_order_config(
        base,
        root,
        interleaved,
        PER_RANK,
        2 * STEPS,
        0.05,
        tmp_path / 'one_process.py',
        accumulate=2,
        load_from=init)
    port = str(random.randint(20000, 40000))
    run_tool(
        'dist_train.sh',
        two,
        2,
        '--work-dir',
        tmp_path / 'two',
        env=dict(PORT=port, OMP_NUM_THREADS='1'))
    run_tool(
        'train.py',
        one,
        '--work-dir',
        tmp_path / 'one',
        env=dict(OMP_NUM_THREADS='1'))

    def weights(path):
        state = torch.load(path, weights_only=True)['state_dict']
        # Running BN statistics are per process by design; compare what
        # the optimizer trains.
        return {
            k: v
            for k, v in state.items() if k.startswith('student.')
            and 'running' not in k and 'num_batches' not in k
        }

    a = weights(tmp_path / 'two' / f'iter_{STEPS}.pth')
    b = weights(tmp_path / 'one' / f'iter_{2 * STEPS}.pth')
    assert a.keys() == b.keys() and a
    gap = weight_gap(a, b, {k: v for k, v in start.items() if k in a})
    print(f'after {STEPS} steps, largest weight difference / update: '
          f'{gap[0]:.2e} ({gap[1]})')
    assert gap[0] <= REDUCTION_ORDER_BOUND, gap
