"""DISTLoss's block policy: blocks, the GPU policy's op count and results.

A CUDA kernel launch per op is what the GPU policy is about; these tests run
it on CPU tensors (``force_block_policy('gpu')``) and count the top-level
``aten::`` ops of one forward + backward with ``torch.profiler``: the ops a
GPU would launch, give or take the few that launch nothing (views).
"""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mmdist.losses import DISTLoss
from mmdist.losses.blocks import (CPU_BLOCK_ELEMENTS, block_elements,
                                  block_policy, force_block_policy,
                                  split_blocks)


def published_dist(student, teacher, activation, tau=1.0, beta=1.0, gamma=1.0):
    """DIST as its authors published it: every channel of a position is a
    column, rows by inter-class Pearson (row-centred cosine), columns by
    intra-class Pearson (column-centred cosine, through a transpose),
    autograd backward."""

    def rows(x):
        if x.dim() == 2:
            return x
        return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])

    def act(x):
        return (torch.softmax(x / tau, dim=1)
                if activation == 'softmax' else torch.sigmoid(x / tau))

    def pearson(a, b):
        return F.cosine_similarity(
            a - a.mean(1, keepdim=True),
            b - b.mean(1, keepdim=True),
            dim=1,
            eps=1e-8)

    y_s, y_t = act(rows(student)), act(rows(teacher.detach()))
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
    return tau**2 * (beta * inter + gamma * intra)


def top_level_aten_ops(fn):
    """Run ``fn`` under the profiler; count the ``aten::`` events with no
    ``aten::`` ancestor (backward ops sit under autograd's engine events)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
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
SHAPES = {
    # RetinaNet P3 in the authors' layout: all 9 x 80 channels are columns.
    'retinanet_p3': ((2, 720, 100, 168), 'sigmoid'),
    'dense': ((403200, 80), 'sigmoid'),
    'cityscapes_decode': ((2, 19, 128, 256), 'softmax'),
    'roi': ((1024, 81), 'softmax'),
}


# 10-17 s each for the two large shapes on a 2-core CPU: not marked heavy.
@pytest.mark.parametrize('name', list(SHAPES))
def test_gpu_policy_launches_and_matches_cpu_policy(name):
    shape, activation = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(shape, generator=gen)
    teacher = 2 * torch.randn(shape, generator=gen)
    dist = DISTLoss(activation=activation)
    with force_block_policy('gpu'):
        assert len(
            split_blocks((shape[0], shape[1], student[0, 0].numel()),
                         block_elements(student.device))) <= 2
        ops = top_level_aten_ops(
            lambda: forward_backward(dist, student, teacher))
        loss, grad = forward_backward(dist, student, teacher)
    published_ops = top_level_aten_ops(lambda: forward_backward(
        lambda s, t: published_dist(s, t, activation), student, teacher))
    assert ops <= 3 * published_ops, (ops, published_ops)

    with force_block_policy('cpu'):
        cpu_loss, cpu_grad = forward_backward(dist, student, teacher)
    assert rel(loss, cpu_loss) < 1e-5
    assert rel(grad, cpu_grad) < 1e-5
    # And the published formulation, up to its own float32 rounding.
    ref_loss, ref_grad = forward_backward(
        lambda s, t: published_dist(s, t, activation), student, teacher)
    assert rel(loss, ref_loss) < 1e-5
    assert rel(grad, ref_grad) < 1e-3
