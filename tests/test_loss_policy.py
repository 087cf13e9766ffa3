"""DISTLoss's block policy: paths, blocks, the GPU policy's op count.

A CUDA kernel launch per op is what the GPU policy is about; these tests run
it on CPU tensors (``force_block_policy('gpu')``) and count the top-level
``aten::`` ops of one forward + backward with ``torch.profiler``: the ops a
GPU would launch, give or take the few that launch nothing (views). The
yardstick is the published formulation (the specification with floor 0),
DISTLoss runs with its default floor.
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mmdist.losses import DISTLoss
from mmdist.losses.blocks import (CPU_BLOCK_ELEMENTS, block_elements,
                                  block_policy, force_block_policy,
                                  one_pass_elements, split_blocks)
from mmdist.losses.dist import fits_one_pass, force_path
from mmdist.losses.dist_spec import dist_spec_loss


def published(student, teacher, activation, tau=1.0, floor=0.):
    """The published formulation: the specification with floor 0 and no
    weights runs exactly its operations."""
    return dist_spec_loss(
        student, teacher, activation=activation, tau=tau, floor=floor)


def top_level_aten_ops(fn, out=None):
    """Run ``fn`` under the profiler; count the ``aten::`` events with no
    ``aten::`` ancestor (backward ops sit under autograd's engine events).
    ``out``, a list, receives what ``fn`` returns."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    if out is not None:
        out.append(result)
    count = 0
    for event in prof.events():
        if not event.name.startswith('aten::'):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith('aten::'):
            parent = parent.cpu_parent
        count += parent is None
    return count


def forward_backward(loss_fn, student, teacher):
    student = student.detach().requires_grad_()
    loss = loss_fn(student, teacher)
    loss.backward()
    return loss.detach(), student.grad


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# ---------------------------------------------------------------- policy
def test_policy_per_device_and_override():
    assert block_policy(torch.device('cpu')) == 'cpu'
    assert block_policy(torch.device('cuda')) == 'gpu'
    assert block_policy(torch.device('meta')) == 'gpu'
    assert block_elements(torch.device('cpu')) == CPU_BLOCK_ELEMENTS
    gpu = block_elements(torch.device('cuda'))
    assert gpu >= 64 * CPU_BLOCK_ELEMENTS
    assert block_elements(torch.device('cuda'), torch.float64) == gpu // 2
    with force_block_policy('gpu'):
        assert block_policy(torch.device('cpu')) == 'gpu'
        with force_block_policy('cpu'):
            assert block_policy(torch.device('cuda')) == 'cpu'
        assert block_elements(torch.device('cpu')) == gpu
    assert block_policy(torch.device('cpu')) == 'cpu'
    # One pass: a cache-sized block on a CPU, 1 GiB of temporaries else.
    assert one_pass_elements(torch.device('cpu')) == CPU_BLOCK_ELEMENTS
    assert one_pass_elements(torch.device('cuda')) == 1 << 26
    assert one_pass_elements(torch.device('cuda'), torch.float64) == 1 << 25
    with pytest.raises(ValueError, match="'tpu'"):
        with force_block_policy('tpu'):
            pass


@pytest.mark.parametrize('shape, elements', [((403200, 80, 1), 1 << 17),
                                             ((2, 19, 524288), 1 << 17),
                                             ((18, 80, 22400), 1 << 24),
                                             ((2, 720, 16800), 1 << 24),
                                             ((3, 5, 7), 4), ((1, 81, 1), 10),
                                             ((0, 4, 3), 8),
                                             ((7, 1, 1), 1 << 17)])
def test_split_blocks_cover_once_within_budget(shape, elements):
    g, c, p = shape
    blocks = split_blocks(shape, elements)
    hits = torch.zeros(g, p, dtype=torch.int32)
    sizes = set()
    for gs, ps in blocks:
        hits[gs, ps] += 1
        rows = len(range(g)[gs]) * len(range(p)[ps])
        assert rows * c <= max(elements, c)  # one row at least
        sizes.add(rows)
    assert bool((hits == 1).all())
    assert len(sizes) <= 4  # equal parts, bar the last in each dim
    # The fewest blocks: splitting positions first, then images.
    if g * c * p <= elements:
        assert len(blocks) == (1 if g else 0)


# ---------------------------------------------------------------- GPU policy
# name: (logits, activation, tau, bound on the ops / the published ops).
SHAPES = {
    'roi': ((1024, 81), 'softmax', 1., 1.),
    'imagenet_tau1': ((256, 1000), 'softmax', 1., 1.),
    'imagenet_tau4': ((256, 1000), 'softmax', 4., 1.),
    'cityscapes_1/8': ((2, 19, 128, 256), 'softmax', 1., 1.),
    # RetinaNet levels in the authors' layout: all 9 x 80 channels are
    # columns (2 images at 1333x800).
    'retinanet_p4': ((2, 720, 50, 84), 'sigmoid', 1., 1.),
    'retinanet_p5': ((2, 720, 25, 42), 'sigmoid', 1., 1.),
    'retinanet_p6': ((2, 720, 13, 21), 'sigmoid', 1., 1.),
    'retinanet_p7': ((2, 720, 7, 11), 'sigmoid', 1., 1.),
    'retinanet_p3': ((2, 720, 100, 168), 'sigmoid', 1., 1.2),
    'dense': ((403200, 80), 'sigmoid', 1., 1.2),
}


# 10-20 s each for the two large shapes on a busy 2-core CPU: not heavy.
@pytest.mark.parametrize('name', list(SHAPES))
def test_gpu_policy_launches_and_matches_published(name):
    shape, activation, tau, bound = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(shape, generator=gen)
    teacher = 2 * torch.randn(shape, generator=gen)
    dist = DISTLoss(activation=activation, tau=tau)
    with force_block_policy('gpu'):
        assert fits_one_pass(student.view(shape[0], shape[1], -1))
        results = []
        ops = top_level_aten_ops(
            lambda: forward_backward(dist, student, teacher), results)
        (loss, grad), = results
    published_ops = top_level_aten_ops(lambda: forward_backward(
        lambda s, t: published(s, t, activation, tau), student, teacher))
    print(f'{name}: {ops} ops, published {published_ops}')
    assert ops <= bound * published_ops, (ops, published_ops)
    # The specification's value (with the floor), up to its own float32
    # rounding.
    ref_loss, ref_grad = forward_backward(
        lambda s, t: published(s, t, activation, tau, dist.floor), student,
        teacher)
    assert rel(loss, ref_loss) < 1e-5
    assert rel(grad, ref_grad) < 1e-3


def test_cpu_policy_streams_what_exceeds_a_block():
    rows = torch.empty(2048, 81, 1)
    with force_block_policy('gpu'):
        assert fits_one_pass(rows)
        assert not fits_one_pass(torch.empty(2, 19, 1 << 21))  # 80M
    with force_block_policy('cpu'):
        assert not fits_one_pass(rows)
        assert fits_one_pass(rows[:1000 // 81])
    assert not fits_one_pass(torch.empty(0, 81, 1))
    with force_path('streamed'):
        assert not fits_one_pass(rows[:1])
        with force_path('fused'):
            assert fits_one_pass(rows)
    with pytest.raises(ValueError, match="'both'"):
        with force_path('both'):
            pass
