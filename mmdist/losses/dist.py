"""DIST: relation loss by Pearson correlation (Huang et al., NeurIPS 2022).

With student and teacher predictions ``Y = act(Z / tau)`` arranged as rows
(instances) by columns (classes):

- inter-class term: mean over rows of ``1 - pearson(Y_s[i, :], Y_t[i, :])``;
- intra-class term: mean over columns of ``1 - pearson(Y_s[:, j], Y_t[:, j])``;
- loss: ``loss_weight * tau**2 * (beta * inter + gamma * intra)``.

Pearson correlation is the cosine of the mean-centred vectors, each norm
clamped below at ``eps`` (as ``torch.nn.functional.cosine_similarity`` does).

The implementation streams over blocks of rows and keeps per-row and
per-column statistics and the student's activations; the backward pass
recomputes the teacher's activations block by block and writes the
student's gradient analytically over the kept activations. The only
logits-sized tensor it allocates is that one, and every block is computed in
float32 (float64 inputs stay float64) whatever the input dtype.

Row weights (``weight``): the inter-class term is the weighted mean over rows
``sum_i w_i (1 - rho_i) / sum_i w_i``; the intra-class term uses weighted
column means and weighted (co)variances, ``sum_i w_i (y_s - mu_s)(y_t - mu_t)``.
A zero weight therefore drops a row from both terms exactly; if every weight
is zero both terms are 0 and the gradient is 0.
"""
from typing import Dict, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mmdist.registry import MODELS
from .rows import as_rows, check_pair, weight_as_rows

# Elements per block: small enough to stay in cache, large enough that the
# per-block Python overhead is negligible.
_BLOCK_ELEMENTS = 1 << 17
_ACTIVATIONS = ('softmax', 'sigmoid')


def _blocks(shape: torch.Size) -> Iterator[Tuple[slice, slice]]:
    """Yield ``(rows_of_G, rows_of_P)`` slices covering a ``(G, C, P)``."""
    g, c, p = shape
    p_step = max(1, min(p, _BLOCK_ELEMENTS // c))
    g_step = max(1, _BLOCK_ELEMENTS // (c * p_step))
    for g0 in range(0, g, g_step):
        for p0 in range(0, p, p_step):
            yield slice(g0, g0 + g_step), slice(p0, p0 + p_step)


def _activate(block: Tensor, activation: str, tau: float,
              dtype: torch.dtype) -> Tensor:
    block = block.to(dtype)
    if tau != 1.0:
        block = block / tau
    if activation == 'softmax':
        return torch.softmax(block, dim=1)
    return torch.sigmoid(block)


def _centre_rows(y: Tensor, activation: str) -> Tensor:
    # A softmax row sums to one, so its mean is exactly 1 / C.
    if activation == 'softmax':
        return y - 1.0 / y.shape[1]
    return y - y.mean(dim=1, keepdim=True)


def _column_sums(x: Tensor) -> Tensor:
    """Sum a ``(g, C, p)`` block over its rows, i.e. dims 0 and 2 (the
    contiguous dim first: much faster than one two-dim reduction)."""
    return x.sum(dim=2).sum(dim=0)


class _DISTTerms(torch.autograd.Function):
    """(inter, intra) of ``(G, C, P)`` logits; gradient for the student only.

    Forward keeps the student's activations (one tensor the size of the
    logits, float32) plus per-row and per-column statistics. Backward
    recomputes the teacher's activations block by block, writes the
    student's gradient analytically into the kept activations' storage and
    returns it, so the whole loss costs about one logits-sized tensor.
    """

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, weight: Optional[Tensor],
                activation: str, tau: float, eps: float) -> Tuple[Tensor, Tensor]:
        g, c, p = student.shape
        device = student.device
        # float32 at least (half inputs), float64 kept for gradcheck.
        dtype = torch.promote_types(student.dtype, torch.float32)
        y_student = torch.empty((g, c, p), device=device, dtype=dtype)
        row_dot = torch.empty(g, p, device=device, dtype=dtype)
        row_norm_s = torch.empty_like(row_dot)
        row_norm_t = torch.empty_like(row_dot)
        # Column sums of the values shifted by the first block's column mean
        # (avoids cancellation in the variance), accumulated in float64.
        sums = torch.zeros(5, c, dtype=torch.float64, device=device)
        shift_s = shift_t = None
        for gs, ps in _blocks(student.shape):
            ys = _activate(student[gs, :, ps], activation, tau, dtype)
            yt = _activate(teacher[gs, :, ps], activation, tau, dtype)
            y_student[gs, :, ps] = ys
            us = _centre_rows(ys, activation)
            ut = _centre_rows(yt, activation)
            row_dot[gs, ps] = (us * ut).sum(dim=1)
            row_norm_s[gs, ps] = torch.linalg.vector_norm(us, dim=1)
            row_norm_t[gs, ps] = torch.linalg.vector_norm(ut, dim=1)
            if shift_s is None:
                shift_s = ys.mean(dim=(0, 2), keepdim=True)
                shift_t = yt.mean(dim=(0, 2), keepdim=True)
            ds = ys.sub_(shift_s)  # ys is stored above; reuse its memory
            dt = yt.sub_(shift_t)
            wds, wdt = ds, dt
            if weight is not None:
                w = weight[gs, ps].unsqueeze(1)
                wds, wdt = ds * w, dt * w
            sums += torch.stack([
                _column_sums(wds),
                _column_sums(wdt),
                _column_sums(wds * ds),
                _column_sums(wdt * dt),
                _column_sums(wds * dt),
            ]).double()

        total = (weight.double().sum() if weight is not None else
                 torch.tensor(float(g * p), dtype=torch.float64, device=device))
        ctx.activation, ctx.tau, ctx.dtype = activation, tau, dtype
        ctx.empty = bool(total <= 0)
        if ctx.empty:
            ctx.save_for_backward(student)
            zero = student.new_zeros((), dtype=dtype)
            return zero, zero.clone()

        # Inter-class: one Pearson correlation per row.
        denom = row_norm_s.clamp_min(eps) * row_norm_t.clamp_min(eps)
        row_rho = row_dot / denom
        if weight is None:
            inter = (1.0 - row_rho).mean()
        else:
            inter = ((1.0 - row_rho) * weight).sum() / total.to(dtype)

        # Intra-class: one Pearson correlation per column.
        sum_s, sum_t, sum_ss, sum_tt, sum_st = sums
        mean_s = shift_s.view(c).double() + sum_s / total
        mean_t = shift_t.view(c).double() + sum_t / total
        var_s = (sum_ss - sum_s * sum_s / total).clamp_min(0)
        var_t = (sum_tt - sum_t * sum_t / total).clamp_min(0)
        cov = sum_st - sum_s * sum_t / total
        norm_s = var_s.sqrt().clamp_min(eps)
        norm_t = var_t.sqrt().clamp_min(eps)
        col_rho = cov / (norm_s * norm_t)
        intra = (1.0 - col_rho).mean().to(dtype)

        # d rho / d u_s = u_t / (|u_s| |u_t|) - rho * u_s / |u_s|^2, where the
        # second part vanishes while |u_s| is clamped at eps.
        row_a = 1.0 / denom
        row_b = torch.where(row_norm_s > eps,
                            row_rho / row_norm_s.clamp_min(eps).square(),
                            torch.zeros_like(row_rho))
        col_a = 1.0 / (norm_s * norm_t)
        col_b = torch.where(var_s.sqrt() > eps, col_rho / norm_s.square(),
                            torch.zeros_like(col_rho))
        ctx.total = float(total)
        # Not save_for_backward: backward overwrites it with the gradient.
        ctx.y_student = y_student
        ctx.save_for_backward(student, teacher, weight, row_a, row_b,
                              mean_s.to(dtype), mean_t.to(dtype),
                              col_a.to(dtype), col_b.to(dtype))
        return inter, intra

    @staticmethod
    def backward(ctx, grad_inter: Tensor, grad_intra: Tensor):
        if ctx.empty:
            (student, ) = ctx.saved_tensors
            return torch.zeros_like(student), None, None, None, None, None
        (student, teacher, weight, row_a, row_b, mean_s, mean_t, col_a,
         col_b) = ctx.saved_tensors
        activation, tau, dtype = ctx.activation, ctx.tau, ctx.dtype
        # The first backward overwrites the kept activations with the
        # gradient; another one (retain_graph) recomputes them.
        kept, ctx.y_student = ctx.y_student, None
        c = student.shape[1]
        # Gradient of (inter, intra) w.r.t. Y_s, split into per-row and
        # per-column coefficients of Y_t and Y_s:
        #   dY = -gi * w / W * (a_r * u_t - b_r * u_s)
        #        -gc * w / C * (a_c * (y_t - m_t) - b_c * (y_s - m_s))
        scale_inter = grad_inter.to(dtype) / ctx.total
        scale_intra = grad_intra.to(dtype) / c
        col_a = (-scale_intra * col_a).view(1, c, 1)
        col_b = (scale_intra * col_b).view(1, c, 1)
        col_const = -(col_a * mean_t.view(1, c, 1) +
                      col_b * mean_s.view(1, c, 1))
        grad = (kept if kept is not None and student.dtype == dtype else
                torch.empty_like(student))
        for gs, ps in _blocks(student.shape):
            ys = (kept[gs, :, ps] if kept is not None else _activate(
                student[gs, :, ps], activation, tau, dtype))
            yt = _activate(teacher[gs, :, ps], activation, tau, dtype)
            ra = (-scale_inter * row_a[gs, ps]).unsqueeze(1)
            rb = (scale_inter * row_b[gs, ps]).unsqueeze(1)
            dy = torch.addcmul(col_const, yt, col_a)
            dy.addcmul_(ys, col_b)
            dy.addcmul_(_centre_rows(yt, activation), ra)
            dy.addcmul_(_centre_rows(ys, activation), rb)
            if weight is not None:
                dy.mul_(weight[gs, ps].unsqueeze(1))
            if activation == 'softmax':
                dy.sub_((dy * ys).sum(dim=1, keepdim=True)).mul_(ys)
            else:
                dy.mul_(ys * (1.0 - ys))
            if tau != 1.0:
                dy.div_(tau)
            grad[gs, :, ps] = dy
        return grad, None, None, None, None, None


def dist_terms(student: Tensor,
               teacher: Tensor,
               weight: Optional[Tensor] = None,
               activation: str = 'softmax',
               tau: float = 1.0,
               num_classes: Optional[int] = None,
               eps: float = 1e-8) -> Tuple[Tensor, Tensor]:
    """Compute the unscaled inter- and intra-class DIST terms.

    Args:
        student (Tensor): Student logits, ``(N, C)`` or ``(N, K, *spatial)``.
        teacher (Tensor): Teacher logits of the same shape; never receives
            gradient.
        weight (Tensor, optional): One non-negative value per row (see
            :func:`mmdist.losses.rows.weight_as_rows`).
        activation (str): ``'softmax'`` over the classes or ``'sigmoid'``
            element-wise.
        tau (float): Temperature dividing the logits before the activation.
        num_classes (int, optional): Columns per row for anchor-major dense
            logits; ``None`` makes all channels the columns.
        eps (float): Lower clamp of each centred vector's norm.

    Returns:
        tuple[Tensor, Tensor]: float32 scalars ``(inter, intra)``, each in
        ``[0, 2]``.
    """
    check_pair(student, teacher)
    if activation not in _ACTIVATIONS:
        raise ValueError(f'activation must be one of {_ACTIVATIONS}, '
                         f'got {activation!r}')
    rows_s, anchors = as_rows(student, num_classes)
    rows_t, _ = as_rows(teacher.detach(), num_classes)
    rows_w = None
    if weight is not None:
        rows_w = weight_as_rows(weight, student.shape, rows_s, anchors)
        if bool((rows_w < 0).any()):
            raise ValueError('weight must be non-negative')
    return _DISTTerms.apply(rows_s, rows_t, rows_w, activation, float(tau),
                            float(eps))


@MODELS.register_module()
class DISTLoss(nn.Module):
    """DIST loss: inter- and intra-class Pearson relations to the teacher.

    Args:
        beta (float): Weight of the inter-class term. Defaults to 1.0.
        gamma (float): Weight of the intra-class term. Defaults to 1.0.
        tau (float): Temperature; both terms are also scaled by ``tau**2``.
            Defaults to 1.0.
        loss_weight (float): Weight of the whole loss. Defaults to 1.0.
        activation (str): ``'softmax'`` (over classes) or ``'sigmoid'``
            (element-wise, for heads trained with focal/BCE losses).
        num_classes (int, optional): Classes per row of anchor-major dense
            logits ``(N, A*C, H, W)``; ``None`` makes every channel a column.
        eps (float): Lower clamp of the centred norms. Defaults to 1e-8.
    """

    def __init__(self,
                 beta: float = 1.0,
                 gamma: float = 1.0,
                 tau: float = 1.0,
                 loss_weight: float = 1.0,
                 activation: str = 'softmax',
                 num_classes: Optional[int] = None,
                 eps: float = 1e-8) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f'DISTLoss activation must be one of '
                             f'{_ACTIVATIONS}, got {activation!r}')
        if tau <= 0:
            raise ValueError(f'DISTLoss tau must be positive, got {tau}')
        self.beta = beta
        self.gamma = gamma
        self.tau = tau
        self.loss_weight = loss_weight
        self.activation = activation
        self.num_classes = num_classes
        self.eps = eps

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        weight: Optional[Tensor] = None,
        return_parts: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """Compute the loss.

        Args:
            student (Tensor): Student logits (see :func:`dist_terms`).
            teacher (Tensor): Teacher logits, same shape.
            weight (Tensor, optional): One non-negative value per row.
            return_parts (bool): Also return the weighted inter and intra
                contributions (detached, for logging).

        Returns:
            Tensor | tuple[Tensor, dict]: The float32 scalar loss, and with
            ``return_parts`` a dict with ``inter`` and ``intra`` that sum to
            it.
        """
        inter, intra = dist_terms(student, teacher, weight, self.activation,
                                  self.tau, self.num_classes, self.eps)
        scale = self.loss_weight * self.tau**2
        inter = scale * self.beta * inter
        intra = scale * self.gamma * intra
        loss = inter + intra
        if return_parts:
            return loss, dict(inter=inter.detach(), intra=intra.detach())
        return loss

    def extra_repr(self) -> str:
        return (f'beta={self.beta}, gamma={self.gamma}, tau={self.tau}, '
                f'loss_weight={self.loss_weight}, '
                f'activation={self.activation!r}, '
                f'num_classes={self.num_classes}')
