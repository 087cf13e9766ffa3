"""Arrange logits as rows (instances) by columns (classes) without copying.

Every loss in mmdist sees its input as a view of shape ``(G, C, P)``: the
classes are dimension 1 and a row is one ``(g, p)`` pair. This covers all
the layouts the tasks produce:

- ``(N, C)`` instance logits (classifier, RoI box classifier) -> ``(N, C, 1)``;
- ``(N, C, *spatial)`` dense logits (segmentation, or a dense detection head
  with ``num_classes=None``: all ``K`` channels of a position form one row)
  -> ``(N, C, prod(spatial))``;
- ``(N, A*C, *spatial)`` with ``num_classes=C``: MMDet orders the channels as
  ``A`` blocks of ``C`` classes (channel ``a*C + c``), so every
  (image, anchor, position) is a row -> ``(N*A, C, prod(spatial))``.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def as_rows(logits: Tensor,
            num_classes: Optional[int] = None) -> Tuple[Tensor, int]:
    """View logits as ``(G, C, P)``.

    Args:
        logits (Tensor): ``(N, K)`` or ``(N, K, *spatial)`` logits.
        num_classes (int, optional): Columns per row. ``None`` uses all ``K``
            channels as the columns; otherwise ``K`` must be a multiple
            ``A * num_classes`` and each anchor block is its own row.

    Returns:
        tuple[Tensor, int]: The ``(G, C, P)`` view and the number of anchor
        blocks ``A`` per image.
    """
    if logits.dim() < 2:
        raise ValueError('logits must be (N, C) or (N, C, *spatial), got '
                         f'shape {tuple(logits.shape)}')
    n, k = logits.shape[:2]
    positions = 1
    for size in logits.shape[2:]:
        positions *= size
    if num_classes is None:
        return logits.reshape(n, k, positions), 1
    if num_classes <= 0 or k % num_classes != 0:
        raise ValueError(f'num_classes={num_classes} does not divide the '
                         f'{k} channels of logits with shape '
                         f'{tuple(logits.shape)}')
    anchors = k // num_classes
    return logits.reshape(n * anchors, num_classes, positions), anchors


def weight_as_rows(weight: Tensor, logits_shape: torch.Size, rows: Tensor,
                   anchors: int) -> Tensor:
    """Arrange a per-row weight like the ``(G, C, P)`` view of the logits.

    Args:
        weight (Tensor): One value per row: ``(N,)`` for ``(N, C)`` logits,
            ``(N, *spatial)`` for dense logits (shared by the ``A`` anchors
            of a position), or already one value per (image, anchor,
            position), i.e. ``G * P`` values in row order.
        logits_shape (torch.Size): Shape of the original logits.
        rows (Tensor): The ``(G, C, P)`` view of the logits.
        anchors (int): Anchor blocks per image (``A``).

    Returns:
        Tensor: float32 weights of shape ``(G, P)``.
    """
    g, _, p = rows.shape
    n = logits_shape[0]
    weight = weight.detach().float()
    if weight.numel() == g * p:
        return weight.reshape(g, p)
    if anchors > 1 and weight.numel() == n * p:
        return weight.reshape(n, 1, p).expand(n, anchors, p).reshape(g, p)
    raise ValueError(f'weight with shape {tuple(weight.shape)} does not give '
                     f'one value per row of logits with shape '
                     f'{tuple(logits_shape)} ({g * p} rows)')


def check_pair(student: Tensor, teacher: Tensor) -> None:
    """Raise a ValueError naming both shapes when they differ."""
    if student.shape != teacher.shape:
        raise ValueError('student and teacher logits must have the same '
                         f'shape, got student {tuple(student.shape)} and '
                         f'teacher {tuple(teacher.shape)}')


def check_number(owner: str,
                 name: str,
                 value: float,
                 positive: bool = False) -> float:
    """Check a hyper-parameter of a loss at construction.

    Args:
        owner (str): Name of the loss, for the message.
        name (str): Name of the parameter, for the message.
        value (float): The value given.
        positive (bool): Reject zero too (temperatures, eps).

    Returns:
        float: ``value`` as a float.

    Raises:
        ValueError: Naming ``owner``, ``name`` and ``value`` unless it is a
            finite number ``>= 0`` (``> 0`` with ``positive``).
    """
    kind = 'positive' if positive else 'non-negative'
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f'{owner} {name} must be a finite {kind} number, '
                         f'got {value!r}')
    return number
