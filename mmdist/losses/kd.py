"""Vanilla knowledge distillation (Hinton et al., 2015) with DISTLoss's API.

- ``softmax``: ``KL(p_t || p_s)`` over the classes of each row at
  temperature ``tau``;
- ``sigmoid``: the binary KL of every class, summed over the classes of a row.

Both are averaged over rows (weighted by ``weight`` when given) and scaled by
``tau**2 * loss_weight``, so a KD config and its DIST sibling differ only in
the loss type and its own hyper-parameters.
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdist.registry import MODELS
from .rows import as_rows, check_number, check_pair, weight_as_rows

_ACTIVATIONS = ('softmax', 'sigmoid')


def kd_divergence(student: Tensor,
                  teacher: Tensor,
                  weight: Optional[Tensor] = None,
                  activation: str = 'softmax',
                  tau: float = 1.0,
                  num_classes: Optional[int] = None) -> Tensor:
    """Mean over rows of the teacher-to-student KL divergence (unscaled).

    Args:
        student (Tensor): Student logits, ``(N, C)`` or ``(N, K, *spatial)``.
        teacher (Tensor): Teacher logits of the same shape (no gradient).
        weight (Tensor, optional): One non-negative value per row.
        activation (str): ``'softmax'`` or ``'sigmoid'``.
        tau (float): Temperature.
        num_classes (int, optional): Classes per row of anchor-major logits.

    Returns:
        Tensor: float32 scalar.
    """
    check_pair(student, teacher)
    if activation not in _ACTIVATIONS:
        raise ValueError(f'activation must be one of {_ACTIVATIONS}, '
                         f'got {activation!r}')
    tau = check_number('kd_divergence', 'tau', tau, positive=True)
    rows_s, anchors = as_rows(student, num_classes)
    rows_t, _ = as_rows(teacher.detach(), num_classes)
    dtype = torch.promote_types(rows_s.dtype, torch.float32)
    zs = rows_s.to(dtype) / tau
    zt = rows_t.to(dtype) / tau
    if activation == 'softmax':
        log_ps = F.log_softmax(zs, dim=1)
        log_pt = F.log_softmax(zt, dim=1)
        per_row = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    else:
        # log(1 - sigmoid(z)) = logsigmoid(-z)
        pt = torch.sigmoid(zt)
        per_row = (pt * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - pt) *
                   (F.logsigmoid(-zt) - F.logsigmoid(-zs))).sum(dim=1)
    if weight is None:
        return per_row.mean()
    rows_w = weight_as_rows(weight, student.shape, rows_s, anchors)
    if bool((rows_w < 0).any()):
        raise ValueError('weight must be non-negative')
    total = rows_w.sum()
    if total <= 0:
        return (per_row * 0).sum()
    return (per_row * rows_w).sum() / total


@MODELS.register_module()
class KDLoss(nn.Module):
    """Vanilla KD loss with the same interface as :class:`DISTLoss`.

    Args:
        tau (float): Temperature; the loss is scaled by ``tau**2``.
        loss_weight (float): Weight of the loss. Defaults to 1.0.
        activation (str): ``'softmax'`` or ``'sigmoid'``.
        num_classes (int, optional): Classes per row of anchor-major dense
            logits; ``None`` makes every channel a column.
    """

    def __init__(self,
                 tau: float = 1.0,
                 loss_weight: float = 1.0,
                 activation: str = 'softmax',
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f'KDLoss activation must be one of '
                             f'{_ACTIVATIONS}, got {activation!r}')
        self.tau = check_number('KDLoss', 'tau', tau, positive=True)
        self.loss_weight = check_number('KDLoss', 'loss_weight', loss_weight)
        self.activation = activation
        self.num_classes = num_classes

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        weight: Optional[Tensor] = None,
        return_parts: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """Compute the loss; ``return_parts`` adds an empty dict (KD has a
        single term) so callers treat both losses alike."""
        loss = self.loss_weight * self.tau**2 * kd_divergence(
            student, teacher, weight, self.activation, self.tau,
            self.num_classes)
        if return_parts:
            return loss, {}
        return loss

    def extra_repr(self) -> str:
        return (f'tau={self.tau}, loss_weight={self.loss_weight}, '
                f'activation={self.activation!r}, '
                f'num_classes={self.num_classes}')
