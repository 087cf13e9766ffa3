"""The readable specification of :class:`~mmdist.losses.DISTLoss`.

:func:`dist_spec` is the published formulation of DIST (activation,
mean-centring, cosine similarity, the intra-class term through a transpose,
autograd for the gradient) with this project's three additions: the
student norm's ``floor``, row ``weight`` and the ``num_classes`` row layout
(see :mod:`mmdist.losses.dist` for the formula). It is the definition:
every path :class:`DISTLoss` takes (:mod:`mmdist.losses.dist_fused`,
:mod:`mmdist.losses.dist_stream`) must give its value and gradient, which
the tests check. With ``floor=0`` and no weight it runs exactly the
published formulation's operations, the yardstick of the benchmarks.

It imports nothing but torch and :mod:`mmdist.losses.rows`, so the GPU
check loads it without OpenMMLab.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .rows import as_rows, weight_as_rows


def centred_cosine(a: Tensor,
                   b: Tensor,
                   w: Optional[Tensor] = None,
                   eps: float = 1e-8,
                   floor: float = 0.) -> Tensor:
    """Pearson correlation of each row of ``a`` with that of ``b`` (their
    columns weighted by ``w``); ``a``'s centred norm is held at no less
    than ``floor`` times ``b``'s, each norm at no less than ``eps``."""
    if w is None and floor == 0:  # the published formulation
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        return F.cosine_similarity(a, b, dim=1, eps=eps)
    w = torch.ones_like(a) if w is None else w.expand_as(a)
    a = a - (w * a).sum(1, keepdim=True) / w.sum(1, keepdim=True)
    b = b - (w * b).sum(1, keepdim=True) / w.sum(1, keepdim=True)
    norm_a = torch.linalg.vector_norm(w.sqrt() * a, dim=1)
    norm_b = torch.linalg.vector_norm(w.sqrt() * b, dim=1)
    norm_a = torch.maximum(norm_a, (floor * norm_b).clamp_min(eps))
    return (w * a * b).sum(1) / (norm_a * norm_b.clamp_min(eps))


def dist_spec(student: Tensor,
              teacher: Tensor,
              weight: Optional[Tensor] = None,
              activation: str = 'softmax',
              tau: float = 1.0,
              num_classes: Optional[int] = None,
              eps: float = 1e-8,
              floor: float = 0.) -> Tuple[Tensor, Tensor]:
    """The unscaled ``(inter, intra)`` DIST terms, by autograd.

    Args:
        student (Tensor): Student logits, ``(N, C)`` or ``(N, K, *spatial)``.
        teacher (Tensor): Teacher logits, same shape (detached).
        weight (Tensor, optional): One non-negative value per row, as
            :func:`mmdist.losses.rows.weight_as_rows` takes it; the terms
            are undefined (NaN) when every weight is 0 (``DISTLoss``: 0).
        activation (str): ``'softmax'`` over the classes or ``'sigmoid'``.
        tau (float): Temperature dividing the logits.
        num_classes (int, optional): Columns per row of anchor-major dense
            logits; ``None`` makes all channels the columns.
        eps (float): Lower clamp of each centred norm.
        floor (float): The student's norm floor relative to the teacher's
            (0: the published formulation).

    Returns:
        tuple[Tensor, Tensor]: Scalars in float32 (float64 for float64
        inputs).
    """

    def matrix(x):  # rows (instances) by columns (classes)
        if x.dim() == 2 and num_classes is None:
            return x
        if num_classes is None:
            return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
        rows = as_rows(x, num_classes)[0]  # (N * A, C, H * W)
        return rows.transpose(1, 2).reshape(-1, num_classes)

    def act(x):
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return (torch.softmax(x / tau, dim=1)
                if activation == 'softmax' else torch.sigmoid(x / tau))

    y_s, y_t = act(matrix(student)), act(matrix(teacher.detach()))
    if weight is None:
        inter = 1 - centred_cosine(y_s, y_t, None, eps, floor).mean()
        intra = 1 - centred_cosine(y_s.t(), y_t.t(), None, eps, floor).mean()
        return inter, intra
    rows, anchors = as_rows(student, num_classes)
    w = weight_as_rows(weight, student.shape, rows, anchors).reshape(-1)
    w = w.to(y_s.dtype)
    rho = centred_cosine(y_s, y_t, None, eps, floor)
    inter = (w * (1 - rho)).sum() / w.sum()
    intra = (1 - centred_cosine(y_s.t(), y_t.t(), w[None], eps, floor)).mean()
    return inter, intra


def dist_spec_loss(student: Tensor,
                   teacher: Tensor,
                   weight: Optional[Tensor] = None,
                   activation: str = 'softmax',
                   tau: float = 1.0,
                   beta: float = 1.0,
                   gamma: float = 1.0,
                   loss_weight: float = 1.0,
                   **kwargs) -> Tensor:
    """``loss_weight * tau**2 * (beta * inter + gamma * intra)`` of
    :func:`dist_spec` (``kwargs``: its ``num_classes``, ``eps``,
    ``floor``)."""
    inter, intra = dist_spec(student, teacher, weight, activation, tau,
                             **kwargs)
    return loss_weight * tau**2 * (beta * inter + gamma * intra)
