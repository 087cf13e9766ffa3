"""Block policy: how many logits :class:`DISTLoss` processes per step.

The loss streams over rectangular blocks of its ``(G, C, P)`` row view. The
right block size depends on the device:

- ``'cpu'``: :data:`CPU_BLOCK_ELEMENTS` elements, small enough that a block
  and its temporaries stay in cache; a large input takes thousands of
  blocks, which costs nothing on a CPU.
- ``'gpu'`` (CUDA and every other non-CPU device): every operation is a
  kernel launch there, so an input up to :data:`GPU_ONE_PASS_BYTES` of
  temporaries (every common one) is computed in one pass
  (:func:`one_pass_elements`), and a larger one in blocks sized by
  :data:`GPU_BLOCK_BYTES` per block-sized temporary (a handful are alive at
  once).

:func:`force_block_policy` overrides the choice, so tests can run the GPU
policy on CPU tensors.
"""
import contextlib
import math
from typing import Iterator, List, Optional, Tuple

import torch

CPU_BLOCK_ELEMENTS = 1 << 17
# 64 MiB per block-sized temporary: with the four or so alive at once the
# loss works in ~256 MiB besides the kept activations, and the largest
# common inputs (RetinaNet's P3 level, 2 x 19 x 512 x 1024 segmentation
# logits, 403,200 x 80 dense rows) take two blocks each.
GPU_BLOCK_BYTES = 64 << 20
# The one-pass path (mmdist.losses.dist_fused) keeps three to four
# logits-sized tensors alive: 1 GiB for four takes every common input
# (RetinaNet's five levels, 403,200 x 80 dense rows, 2 x 19 x 512 x 1024
# segmentation logits) in one pass, at half the published formulation's
# peak memory.
GPU_ONE_PASS_BYTES = 1 << 30
POLICIES = ('cpu', 'gpu')

_forced: Optional[str] = None


def block_policy(device: torch.device) -> str:
    """Name of the policy for tensors on ``device`` (``'cpu'`` or ``'gpu'``),
    unless :func:`force_block_policy` overrides it."""
    if _forced is not None:
        return _forced
    return 'cpu' if torch.device(device).type == 'cpu' else 'gpu'


def block_elements(device: torch.device,
                   dtype: torch.dtype = torch.float32) -> int:
    """Elements per block for tensors on ``device`` computed in ``dtype``.

    Args:
        device (torch.device): Device of the logits.
        dtype (torch.dtype): Dtype the blocks are computed in.

    Returns:
        int: Upper bound on the elements of one block.
    """
    if block_policy(device) == 'cpu':
        return CPU_BLOCK_ELEMENTS
    itemsize = torch.empty((), dtype=dtype).element_size()
    return GPU_BLOCK_BYTES // itemsize


def one_pass_elements(device: torch.device,
                      dtype: torch.dtype = torch.float32) -> int:
    """Most elements of one logits tensor that DISTLoss computes in one
    pass (:mod:`mmdist.losses.dist_fused`) on ``device``; larger ones are
    streamed in blocks.

    Args:
        device (torch.device): Device of the logits.
        dtype (torch.dtype): Dtype the pass is computed in.

    Returns:
        int: One block of the CPU policy (cache-sized blocks are faster on
        a CPU), else :data:`GPU_ONE_PASS_BYTES` over four temporaries.
    """
    if block_policy(device) == 'cpu':
        return CPU_BLOCK_ELEMENTS
    return GPU_ONE_PASS_BYTES // (4 * dtype.itemsize)


@contextlib.contextmanager
def force_block_policy(policy: str) -> Iterator[None]:
    """Use ``policy`` for every device inside the ``with`` block.

    Args:
        policy (str): ``'cpu'`` or ``'gpu'``.
    """
    global _forced
    if policy not in POLICIES:
        raise ValueError(f'policy must be one of {POLICIES}, got {policy!r}')
    previous, _forced = _forced, policy
    try:
        yield
    finally:
        _forced = previous


def split_blocks(shape: Tuple[int, int, int],
                 elements: int) -> List[Tuple[slice, slice]]:
    """Cover a ``(G, C, P)`` shape with blocks of at most ``elements``.

    A block is whole rows, ``(slice of G, slice of P)``: the positions
    ``P`` are split first, then the images ``G``, each into the fewest
    equal parts that fit (a block holds at least one row even when ``C``
    exceeds ``elements``).

    Args:
        shape (tuple[int, int, int]): ``(G, C, P)``.
        elements (int): Upper bound on the elements of a block.

    Returns:
        list[tuple[slice, slice]]: The blocks, in memory order.
    """
    g, c, p = shape
    if g == 0 or p == 0:
        return []
    p_step = _balanced_step(p, max(1, elements // max(c, 1)))
    g_step = _balanced_step(g, max(1, elements // max(c * p_step, 1)))
    return [(slice(g0, g0 + g_step), slice(p0, p0 + p_step))
            for g0 in range(0, g, g_step) for p0 in range(0, p, p_step)]


def _balanced_step(size: int, most: int) -> int:
    """Step of the fewest equal parts of ``size`` with at most ``most``
    each (equal parts: no small last block)."""
    parts = math.ceil(size / most)
    return math.ceil(size / parts)
