"""DIST: relation loss by Pearson correlation (Huang et al., NeurIPS 2022).

With student and teacher predictions ``Y = act(Z / tau)`` arranged as rows
(instances) by columns (classes):

- inter-class term: mean over rows of ``1 - pearson(Y_s[i, :], Y_t[i, :])``;
- intra-class term: mean over columns of ``1 - pearson(Y_s[:, j], Y_t[:, j])``;
- loss: ``loss_weight * tau**2 * (beta * inter + gamma * intra)``.

Pearson correlation is the cosine of the mean-centred vectors, each norm
clamped below at ``eps`` (as ``torch.nn.functional.cosine_similarity`` does).

The implementation streams over blocks of rows (sized per device, see
:mod:`mmdist.losses.blocks`) and keeps per-row and per-column statistics and
the student's activations; the backward pass recomputes the teacher's
activations block by block and writes the student's gradient analytically
over the kept activations. The only logits-sized tensor it allocates is
that one, and every block is computed in float32 (float64 inputs stay
float64) whatever the input dtype.

Row weights (``weight``): the inter-class term is the weighted mean over rows
``sum_i w_i (1 - rho_i) / sum_i w_i``; the intra-class term uses weighted
column means and weighted (co)variances, ``sum_i w_i (y_s - mu_s)(y_t - mu_t)``.
A zero weight therefore drops a row from both terms exactly; if every weight
is zero both terms are 0 and the gradient is 0.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mmdist.registry import MODELS
from .blocks import block_elements, split_blocks
from .rows import as_rows, check_number, check_pair, weight_as_rows

_ACTIVATIONS = ('softmax', 'sigmoid')


def _activate(block: Tensor, activation: str, tau: float,
              dtype: torch.dtype) -> Tensor:
    if block.dtype != dtype:
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
    """Sum a ``(g, C, p)`` block over its rows, i.e. dims 0 and 2 (on a CPU
    the contiguous dim first is much faster than one two-dim reduction)."""
    if x.shape[0] == 1 or x.shape[2] == 1:
        return x.sum(dim=(0, 2))
    return x.sum(dim=2).sum(dim=0)


def _column_means(y: Tensor, w: Optional[Tensor]) -> Tensor:
    """(Weighted) column means of a block, shaped ``(1, C, 1)``."""
    if w is None:
        return y.mean(dim=(0, 2), keepdim=True)
    return (_column_sums(y * w) / w.sum()).view(1, -1, 1)


def _weighted_first(blocks: List[Tuple[slice, slice]],
                    weight: Tensor) -> List[Tuple[slice, slice]]:
    """Move a block holding a row of positive weight to the front: the
    column means of the first block are the shift of the running sums, and
    a shift taken from weighted rows makes a column whose weighted values
    are all equal come out with a variance of exactly zero."""
    p = weight.shape[1]
    row = int(weight.reshape(-1).argmax())
    g_row, p_row = divmod(row, p)
    for i, (gs, ps) in enumerate(blocks):
        if gs.start <= g_row < gs.stop and ps.start <= p_row < ps.stop:
            return [blocks[i]] + blocks[:i] + blocks[i + 1:]
    return blocks


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
        blocks = split_blocks((g, c, p), block_elements(device, dtype))
        total = float(g * p if weight is None else weight.double().sum())
        ctx.activation, ctx.tau, ctx.dtype = activation, tau, dtype
        ctx.empty = total <= 0
        if ctx.empty:
            ctx.save_for_backward(student)
            zero = student.new_zeros((), dtype=dtype)
            return zero, zero.clone()
        if weight is not None:
            blocks = _weighted_first(blocks, weight)
        # The backward pass recomputes the teacher's activations over the
        # same blocks, so they are bitwise the forward's.
        ctx.blocks, ctx.total = blocks, total

        y_student = torch.empty((g, c, p), device=device, dtype=dtype)
        row_dot = torch.empty(g, p, device=device, dtype=dtype)
        row_norm_s = torch.empty_like(row_dot)
        row_norm_t = torch.empty_like(row_dot)
        # Column sums of the values shifted by the first block's column
        # means (avoids cancellation in the variance), in float64.
        sums = torch.zeros(5, c, dtype=torch.float64, device=device)
        shift_s = shift_t = None
        for gs, ps in blocks:
            ys = _activate(student[gs, :, ps], activation, tau, dtype)
            yt = _activate(teacher[gs, :, ps], activation, tau, dtype)
            y_student[gs, :, ps] = ys
            us = _centre_rows(ys, activation)
            ut = _centre_rows(yt, activation)
            torch.linalg.vector_norm(us, dim=1, out=row_norm_s[gs, ps])
            torch.linalg.vector_norm(ut, dim=1, out=row_norm_t[gs, ps])
            torch.sum(us.mul_(ut), dim=1, out=row_dot[gs, ps])
            del us, ut
            w = None if weight is None else weight[gs, ps].unsqueeze(1)
            if shift_s is None:
                shift_s = _column_means(ys, w)
                shift_t = _column_means(yt, w)
            ds = ys.sub_(shift_s)  # ys is stored above; reuse its memory
            dt = yt.sub_(shift_t)
            wds, wdt = (ds, dt) if w is None else (ds * w, dt * w)
            sums += torch.stack([
                _column_sums(wds),
                _column_sums(wdt),
                _column_sums(wds * ds),
                _column_sums(wdt * dt),
                _column_sums(wds * dt),
            ]).double()

        # Inter-class: one Pearson correlation per row.
        denom = row_norm_s.clamp_min(eps) * row_norm_t.clamp_min(eps)
        row_rho = row_dot / denom
        if weight is None:
            inter = (1.0 - row_rho).mean()
        else:
            inter = ((1.0 - row_rho) * weight).sum() / total

        # Intra-class: one Pearson correlation per column.
        sum_s, sum_t, sum_ss, sum_tt, sum_st = sums
        mean_s = shift_s.view(c).double() + sum_s / total
        mean_t = shift_t.view(c).double() + sum_t / total
        spread_s = (sum_ss - sum_s * sum_s / total).clamp_min(0).sqrt()
        spread_t = (sum_tt - sum_t * sum_t / total).clamp_min(0).sqrt()
        norm_s = spread_s.clamp_min(eps)
        norm_t = spread_t.clamp_min(eps)
        col_rho = (sum_st - sum_s * sum_t / total) / (norm_s * norm_t)
        intra = (1.0 - col_rho).mean().to(dtype)

        # d rho / d u_s = u_t / (|u_s| |u_t|) - rho * u_s / |u_s|^2; the
        # second part is the norm's, which passes no gradient while the norm
        # is clamped at eps.
        row_a = 1.0 / denom
        row_b = torch.where(row_norm_s > eps,
                            row_rho / row_norm_s.clamp_min(eps).square(),
                            torch.zeros_like(row_rho))
        col_a = 1.0 / (norm_s * norm_t)
        col_b = torch.where(spread_s > eps, col_rho / norm_s.square(),
                            torch.zeros_like(col_rho))
        # Backward centres the columns by the mean in two parts, hi + lo, so
        # the centred values are as exact as float32 values can be. A column
        # whose spread is clamped keeps only hi: its values equal the mean up
        # to rounding, and lo times the huge col_a would be noise.
        hi_s, hi_t = mean_s.to(dtype), mean_t.to(dtype)
        lo_s = torch.where(spread_s > eps, mean_s - hi_s.double(), 0.0)
        lo_t = torch.where(spread_t > eps, mean_t - hi_t.double(), 0.0)
        # Not save_for_backward: backward overwrites it with the gradient.
        ctx.y_student = y_student
        ctx.save_for_backward(student, teacher, weight, row_a, row_b, col_a,
                              col_b, hi_s, hi_t, lo_s, lo_t)
        return inter, intra

    @staticmethod
    def backward(ctx, grad_inter: Tensor, grad_intra: Tensor):
        if ctx.empty:
            (student, ) = ctx.saved_tensors
            return torch.zeros_like(student), None, None, None, None, None
        (student, teacher, weight, row_a, row_b, col_a, col_b, hi_s, hi_t,
         lo_s, lo_t) = ctx.saved_tensors
        activation, tau, dtype = ctx.activation, ctx.tau, ctx.dtype
        g, c, p = student.shape
        # The first backward overwrites the kept activations with the
        # gradient; another one (retain_graph) recomputes them.
        kept, ctx.y_student = ctx.y_student, None
        in_place = kept is not None and student.dtype == dtype
        grad = kept if in_place else torch.empty_like(student)
        # Gradient w.r.t. Y_s of gi * inter + gc * intra, before the
        # activation, with per-row (r) and per-column (c) coefficients and
        # u the centred values (rows centred by row, columns by column):
        #   dY = -gi * w / W * (a_r * u_t - b_r * u_s)
        #        -gc * w / C * (a_c * u_t - b_c * u_s)
        # 1 / tau (the activation's inner derivative) is folded in too.
        scale_inter = grad_inter.to(dtype) / (ctx.total * tau)
        scale_intra = grad_intra.double() / (c * tau)
        col_a = -scale_intra * col_a
        col_b = scale_intra * col_b
        const = (-(col_a * lo_t + col_b * lo_s)).to(dtype).view(1, c, 1)
        col_a = col_a.to(dtype).view(1, c, 1)
        col_b = col_b.to(dtype).view(1, c, 1)
        hi_s, hi_t = hi_s.view(1, c, 1), hi_t.view(1, c, 1)
        row_a = (-scale_inter * row_a)
        row_b = (scale_inter * row_b)
        if weight is not None:
            row_a, row_b = row_a * weight, row_b * weight
            weight = weight.view(g, 1, p)
        row_a, row_b = row_a.view(g, 1, p), row_b.view(g, 1, p)
        for gs, ps in ctx.blocks:
            ys = (kept[gs, :, ps] if kept is not None else _activate(
                student[gs, :, ps], activation, tau, dtype))
            yt = _activate(teacher[gs, :, ps], activation, tau, dtype)
            dy = torch.addcmul(const, yt - hi_t, col_a)
            dy.addcmul_(ys - hi_s, col_b)
            if weight is not None:
                dy.mul_(weight[gs, :, ps])
            dy.addcmul_(_centre_rows(yt, activation), row_a[gs, :, ps])
            del yt
            dy.addcmul_(_centre_rows(ys, activation), row_b[gs, :, ps])
            # Through the activation, into ys's storage when it is the
            # gradient's.
            if activation == 'softmax':
                dy.sub_((dy * ys).sum(dim=1, keepdim=True))
                local = ys
            else:
                local = 1.0 - ys
                local = ys.mul_(local) if in_place else local.mul_(ys)
            if in_place:
                local.mul_(dy)
            else:
                grad[gs, :, ps] = dy.mul_(local)
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
    tau = check_number('dist_terms', 'tau', tau, positive=True)
    eps = check_number('dist_terms', 'eps', eps, positive=True)
    rows_s, anchors = as_rows(student, num_classes)
    rows_t, _ = as_rows(teacher.detach(), num_classes)
    rows_w = None
    if weight is not None:
        rows_w = weight_as_rows(weight, student.shape, rows_s, anchors)
        if bool((rows_w < 0).any()):
            raise ValueError('weight must be non-negative')
    return _DISTTerms.apply(rows_s, rows_t, rows_w, activation, tau, eps)


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
        self.beta = check_number('DISTLoss', 'beta', beta)
        self.gamma = check_number('DISTLoss', 'gamma', gamma)
        self.tau = check_number('DISTLoss', 'tau', tau, positive=True)
        self.loss_weight = check_number('DISTLoss', 'loss_weight',
                                        loss_weight)
        self.activation = activation
        self.num_classes = num_classes
        self.eps = check_number('DISTLoss', 'eps', eps, positive=True)

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
