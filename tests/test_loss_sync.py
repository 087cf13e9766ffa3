"""``DISTLoss(sync=True)``: both terms over the global batch of all ranks.

Two processes (gloo, CPU) each hold part of a batch; a tiny model wrapped in
DDP computes the synced loss on its part. Every rank's loss value, and the
gradient DDP averages, must equal one process's on the concatenated batch
(rows in rank order), with row weights, unequal row counts, a rank without
rows or without weight, and a batch whose total weight is 0. One 2-process
spawn runs every case (process start-up dominates) and writes what each rank
saw; the tests compare it with the single-process reference.
"""
import copy
import datetime
import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.config import Config
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from helpers import build, load_offline, run_tool
from mmdist.distillers import Distiller
from mmdist.distillers.terms import DistillTerm
from mmdist.losses import DISTLoss
from mmdist.losses.dist import force_path

WORLD = 2
TOLERANCE = dict(rtol=1e-5, atol=1e-7)
FEATURES = 6


# ------------------------------------------------------------------ cases
def _rows_case(act, counts, weights=None, classes=7, seed=0, **loss_kwargs):
    """Per-rank ``(x, teacher logits, weight)`` for a Linear student."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for rank, n in enumerate(counts):
        x = torch.randn(n, FEATURES, generator=gen)
        t = 2 * torch.randn(n, classes, generator=gen)
        w = None
        if weights == 'random':
            w = torch.rand(n, generator=gen)
        elif weights is not None:  # one constant per rank
            w = torch.full((n, ), float(weights[rank]))
        parts.append((x, t, w))
    return dict(
        model='linear',
        classes=classes,
        parts=parts,
        loss=dict(activation=act, **loss_kwargs))


def _dense_case(seed=1):
    """Sigmoid dense logits (N, A*C, H, W), per-pixel weights, anchor rows,
    several blocks per rank (CPU policy), 2 and 3 images per rank."""
    gen = torch.Generator().manual_seed(seed)
    anchors, classes, size = 2, 20, 48
    parts = []
    for n in (2, 3):
        x = torch.randn(n, FEATURES, size, size, generator=gen)
        t = torch.randn(n, anchors * classes, size, size, generator=gen)
        w = (torch.rand(n, size, size, generator=gen) > 0.3).float()
        parts.append((x, t, w))
    return dict(
        model='conv',
        classes=anchors * classes,
        parts=parts,
        loss=dict(activation='sigmoid', num_classes=classes))


CASES = {
    'softmax_equal':
    _rows_case('softmax', (6, 6), tau=2., beta=1.5, gamma=0.5),
    'sigmoid_unequal':
    _rows_case('sigmoid', (3, 9), seed=2),
    'softmax_weighted_unequal':
    _rows_case('softmax', (4, 7), 'random', seed=3, loss_weight=2.),
    'sigmoid_weighted_unequal':
    _rows_case('sigmoid', (8, 5), 'random', seed=4, tau=4.),
    'sigmoid_rank_without_weight':
    _rows_case('sigmoid', (5, 2), (1., 0.), seed=5),
    'softmax_rank_without_rows':
    _rows_case('softmax', (7, 0), seed=6),
    'softmax_no_weight_anywhere':
    _rows_case('softmax', (3, 4), (0., 0.), seed=7),
    # One weighted row in the global batch: every column has one value,
    # the intra-class term passes exactly no gradient (beta=0).
    'softmax_one_row_in_all':
    _rows_case('softmax', (3, 1), (0., 1.), classes=80, seed=8, beta=0.),
    'sigmoid_dense_blocks':
    _dense_case(),
    # A nearly constant student: rows and columns at DISTLoss's floor.
    'softmax_student_at_floor':
    dict(
        _rows_case(
            'softmax', (5, 6),
            'random',
            classes=12,
            seed=9,
            beta=2.,
            gamma=2.,
            tau=4.),
        model='tiny'),
}


def _model(kind, classes):
    torch.manual_seed(0)
    if kind == 'linear':
        return nn.Linear(FEATURES, classes)
    if kind == 'tiny':  # outputs ~ the bias: a nearly constant student
        model = nn.Linear(FEATURES, classes)
        with torch.no_grad():
            model.weight.mul_(1e-5)
        return model
    return nn.Conv2d(FEATURES, classes, 1)


def _loss_and_grads(model, case, x, t, w, sync):
    """Loss value, parts and the (DDP-averaged) parameter gradients."""
    loss_fn = DISTLoss(sync=sync, **case['loss'])
    loss, parts = loss_fn(model(x), t, w, return_parts=True)
    loss.backward()
    params = model.module if isinstance(model, DDP) else model
    return dict(
        loss=loss.detach(),
        inter=parts['inter'],
        intra=parts['intra'],
        grads=[p.grad.clone() for p in params.parameters()])


def single_process(case):
    """The reference: one process, the ranks' parts concatenated."""
    xs, ts, ws = zip(*case['parts'])
    w = None if ws[0] is None else torch.cat(ws)
    model = _model(case['model'], case['classes'])
    return _loss_and_grads(
        model, case, torch.cat(xs), torch.cat(ts), w, sync=False)


# ------------------------------------------------------ the 2-process run
class _SkipHost:
    """Just what ``Distiller._term_losses`` uses of a distiller."""
    max_nonfinite_steps = 10
    distill_weight = 1.0
    _term_losses = Distiller._term_losses
    _skip_nonfinite = Distiller._skip_nonfinite


def _skip_check(rank):
    """A non-finite teacher on rank 1 only: both ranks skip the synced
    term (one would wait in the loss's all-reduce otherwise), then both
    compute it on the next, finite step."""
    host = _SkipHost()
    term = DistillTerm('fc', 'fc', dict(type='mmdist.DISTLoss', sync=True))
    gen = torch.Generator().manual_seed(rank)
    student = torch.randn(4, 5, generator=gen, requires_grad=True)
    teacher = torch.randn(4, 5, generator=gen)
    seen = []
    for step in range(2):
        bad = teacher.clone()
        if rank == 1 and step == 0:
            bad[0, 0] = float('nan')
        term.levels = lambda: ([student], [bad])  # noqa: B023
        losses = host._term_losses(term, None)
        seen.append((float(losses['loss_dist']), term.nonfinite_in_a_row,
                     term.nonfinite_total))
    return seen


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo',
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for name, case in CASES.items():
            x, t, w = case['parts'][rank]
            model = DDP(_model(case['model'], case['classes']))
            results[name] = _loss_and_grads(model, case, x, t, w, sync=True)
        results['skip'] = _skip_check(rank)
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    """What each of the two ranks computed, one spawn for every case."""
    out_dir = str(tmp_path_factory.mktemp('sync'))
    port = random.randint(20000, 40000)
    mp.spawn(_worker, args=(port, out_dir), nprocs=WORLD, join=True)
    return [
        torch.load(os.path.join(out_dir, f'rank{r}.pth'), weights_only=True)
        for r in range(WORLD)
    ]


@pytest.mark.parametrize('name', list(CASES))
def test_two_ranks_equal_one_process_on_the_whole_batch(ranks, name):
    ref = single_process(CASES[name])
    worst = 0.
    for rank in ranks:
        got = rank[name]
        for key in ('loss', 'inter', 'intra'):
            assert torch.allclose(got[key], ref[key],
                                  **TOLERANCE), (name, key, float(got[key]),
                                                 float(ref[key]))
        for mine, theirs in zip(got['grads'], ref['grads']):
            # float32 rounding scales with the gradient (the student at the
            # floor has gradients of ~70 w.r.t. its 1e-5-scaled weights).
            scale = float(theirs.abs().max()) or 1.
            atol = TOLERANCE['atol'] * max(1., scale)
            assert torch.allclose(mine, theirs, TOLERANCE['rtol'],
                                  atol), (name,
                                          float((mine - theirs).abs().max()))
            worst = max(worst, float((mine - theirs).abs().max()) / scale)
    print(f'{name}: loss {float(ranks[0][name]["loss"]):.6f} (one process '
          f'{float(ref["loss"]):.6f}), largest gradient difference '
          f'{worst:.1e} of the largest gradient')
    # Bitwise the same value on every rank (one all-reduce result).
    assert torch.equal(ranks[0][name]['loss'], ranks[1][name]['loss'])


def test_empty_and_single_row_cases_are_exact(ranks):
    for rank in ranks:
        empty = rank['softmax_no_weight_anywhere']
        assert float(empty['loss']) == 0
        assert all(not g.any() for g in empty['grads'])
        # Every column has one weighted value in the global batch.
        one = rank['softmax_one_row_in_all']
        assert all(not g.any() for g in one['grads'])


def test_nonfinite_teacher_on_one_rank_skips_on_all(ranks):
    for rank in ranks:
        (skipped, in_a_row, total), (loss, after, _) = rank['skip']
        assert skipped == 0 and in_a_row == 1 and total == 1
        assert loss > 0 and after == 0
    assert ranks[0]['skip'][1][0] == ranks[1]['skip'][1][0]


# ------------------------------------------------- without process group
@pytest.mark.parametrize('name',
                         ['softmax_weighted_unequal', 'sigmoid_dense_blocks'])
def test_without_process_group_sync_changes_nothing(name):
    assert not dist.is_initialized()
    case = copy.deepcopy(CASES[name])
    xs, ts, ws = zip(*case['parts'])
    args = (torch.cat(xs), torch.cat(ts), torch.cat(ws))
    on = _loss_and_grads(
        _model(case['model'], case['classes']), case, *args, sync=True)
    # sync always takes the streamed path; without it a small input takes
    # the one-pass path (equal up to rounding, tests/test_losses.py).
    with force_path('streamed'):
        off = _loss_and_grads(
            _model(case['model'], case['classes']), case, *args, sync=False)
    assert torch.equal(on['loss'], off['loss'])
    assert all(torch.equal(a, b) for a, b in zip(on['grads'], off['grads']))


def test_sync_must_be_a_bool():
    with pytest.raises(ValueError, match='DISTLoss sync'):
        DISTLoss(sync='yes')


# ------------------------------------------------------------- configs
@pytest.mark.parametrize('path', [
    'mmpretrain/resnet34_to_resnet18_8xb32_in1k_dist_sync.py',
    'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist_sync.py'
])
def test_sync_configs_build_with_sync_on(path):
    cfg = load_offline(path)
    plain = load_offline(path.replace('_dist_sync', '_dist'))
    # The one-line switch is the only difference from the paper config.
    for term in plain.model.distill_terms:
        term.loss.sync = True
    assert cfg.model.to_dict() == plain.model.to_dict()
    model = build(cfg)
    losses = [term.loss for term in model.terms]
    assert losses and all(loss.sync for loss in losses)


# ------------------------------------------------------- training run
@pytest.mark.heavy
def test_two_process_training_equals_one_process_global_batch(tmp_path):
    """3 steps of a GroupNorm ResNet-18 student, 2 images per rank and sync
    on, give the weights of one process stepping on the same 4 images (its
    task loss is the mean over 4 = DDP's average of two means over 2).

    Why the bound is relative to how far each tensor moved: with sync on,
    both runs compute the same function of the same images and the same
    initial weights (one checkpoint loaded by both), so they differ only in
    the order of float32 sums: per-rank partial sums of DIST's column
    statistics and of each gradient, added by all_reduce, against one
    process's sums over the whole batch. Each sum then differs by a few
    units of float32 rounding (6e-8) relative to the sum of its terms'
    magnitudes; DIST's Pearson normalisation divides by standard
    deviations, which amplifies that, and three momentum steps carry it
    forward. Every such difference enters the weights through the updates,
    so it is a fraction of the update, whatever a CPU's summation kernels
    are; an absolute bound is not (it depends on the tensor's scale and on
    where the CPU's kernels block their sums). 1% of the update is far above
    rounding (the same one-process run with AVX2 kernels, which reorders
    every convolution's and reduction's sums, is also checked against it)
    and far below a real error: without sync each rank normalises over its
    own two images and the weights differ by a sizeable part of the update.
    """
    from helpers import REDUCTION_ORDER_BOUND, save_initial_student, weight_gap
    from test_e2e_classification import tiny_classification_config
    from test_multiprocess import fixed_order_config, write_ann_file
    steps, per_rank = 3, 2
    base = tiny_classification_config(tmp_path)
    root = tmp_path / 'imagenet'
    total = steps * WORLD * per_rank
    natural = tmp_path / 'natural.txt'
    assert write_ann_file(root, natural, range(total)) >= total
    # DefaultSampler(shuffle=False) deals rank r the samples r, r+2, ...;
    # the single process takes both ranks' step-s pairs as its step-s batch.
    dealt = [
        i for s in range(steps) for r in range(WORLD)
        for i in range(r, total, WORLD)[s * per_rank:(s + 1) * per_rank]
    ]
    joined = tmp_path / 'joined.txt'
    write_ann_file(root, joined, dealt)

    def config(ann_file, batch_size, name):
        path = fixed_order_config(base, root, ann_file, batch_size, steps,
                                  0.01, tmp_path / f'{name}.py')
        cfg = Config.fromfile(str(path))
        # No per-process batch statistics in the student: the loss is the
        # only coupling between ranks (the teacher runs in eval mode).
        cfg.model.student.backbone.norm_cfg = dict(type='GN', num_groups=32)
        # A head far from constant outputs: at the zoo's init (std 0.01)
        # DIST's gradient is ill-conditioned (the loss-level cases above
        # cover that regime).
        cfg.model.student.head.init_cfg = dict(
            type='Normal', layer='Linear', std=1.)
        for term in cfg.model.distill_terms:
            term.loss.sync = True
        cfg.load_from = str(init)
        cfg.dump(str(path))
        return path, cfg

    # One initial student for every run, so each tensor's update is known.
    init = tmp_path / 'init.pth'
    start = save_initial_student(config(natural, per_rank, 'probe')[1], init)

    two, _ = config(natural, per_rank, 'two_processes')
    one, _ = config(joined, WORLD * per_rank, 'one_process')
    port = str(random.randint(20000, 40000))
    run_tool(
        'dist_train.sh',
        two,
        WORLD,
        '--work-dir',
        tmp_path / 'two',
        env=dict(PORT=port, OMP_NUM_THREADS='1'))
    # The one-process run twice: with the host's kernels, and with AVX2
    # kernels (oneDNN and ATen vectorised 8 floats wide instead of 16), which
    # sums in another order; on an AVX2-only CPU both runs are the same.
    isa = dict(
        native={},
        avx2=dict(ONEDNN_MAX_CPU_ISA='AVX2', ATEN_CPU_CAPABILITY='avx2'))
    for name, env in isa.items():
        run_tool(
            'train.py',
            one,
            '--work-dir',
            tmp_path / f'one_{name}',
            env=dict(OMP_NUM_THREADS='1', **env))

    def weights(run):
        state = torch.load(
            tmp_path / run / f'iter_{steps}.pth',
            weights_only=True)['state_dict']
        return {k: v for k, v in state.items() if k.startswith('student.')}

    one, avx2, two = weights('one_native'), weights('one_avx2'), weights('two')
    assert set(start) <= set(two) and set(two) == set(one) and start
    isa_gap = weight_gap(avx2, one, start)
    ranks_gap = weight_gap(two, one, start)
    print(f'weights after {steps} steps, largest difference / update: '
          f'AVX2 vs native kernels {isa_gap[0]:.2e} ({isa_gap[1]}), '
          f'2 ranks vs 1 process {ranks_gap[0]:.2e} ({ranks_gap[1]})')
    assert isa_gap[0] <= REDUCTION_ORDER_BOUND, isa_gap
    assert ranks_gap[0] <= REDUCTION_ORDER_BOUND, ranks_gap
