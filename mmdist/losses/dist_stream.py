"""The DIST terms as one autograd function streaming over blocks of rows.

Forward streams over blocks of the ``(G, C, P)`` row view (sized per device,
see :mod:`mmdist.losses.blocks`) and keeps per-row and per-column statistics
plus the student's activations; backward recomputes the teacher's
activations block by block and writes the student's gradient analytically
over the kept activations. The only logits-sized tensor it allocates is
that one, and every block is computed in float32 (float64 inputs stay
float64) whatever the input dtype.

The gradient is written over centred values, ``a * (y - mean)``, never as
``a * y + const``: where a column's norm is clamped at ``eps`` its
coefficient is ~``1 / eps**2`` and the second form cancels into noise. A
column whose values are all equal (a batch of one, a single weighted row)
has exactly zero spread and passes exactly no gradient.

With ``world > 1`` (``DISTLoss(sync=True)`` under a process group) both
terms are those of the global batch, every process's rows together: two
all-reduces per call, one of the column sums of the first blocks and the
row totals (the shift common to all ranks, ``2 * C + 2`` float64 numbers),
one of the column statistics around it and the inter-class numerator
(``5 * C + 1``). Backward needs no collective: each rank writes the global
loss's gradient for its own rows, times ``world`` because DDP averages the
ranks' gradients.

See :mod:`mmdist.losses.dist` for the formula and the row weights.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .blocks import block_elements, split_blocks

ACTIVATIONS = ('softmax', 'sigmoid')


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


def sync_world_size(sync: bool) -> int:
    """Number of processes the DIST statistics are summed over.

    Args:
        sync (bool): Whether global-batch statistics are asked for.

    Returns:
        int: The default process group's size with ``sync`` under an
        initialised group, else 1 (per-process statistics).
    """
    if not sync or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def _common_shifts(
        firsts: Optional[Tuple[Tensor, Tensor]], w: Optional[Tensor],
        local_total: float, c: int, device: torch.device,
        dtype: torch.dtype) -> Tuple[Optional[Tuple[Tensor, Tensor]], float]:
    """Column shifts common to all ranks, and the global row total.

    The shift is the (weighted) column mean of every rank's first block
    together: close to the global column means, as the per-rank shift is to
    the local ones (no cancellation in the variance), and equal to the value
    of a column whose weighted values are all equal (zero spread stays
    exactly zero). All ranks get bitwise the same shift from the same
    all-reduce.

    Args:
        firsts (tuple[Tensor, Tensor], optional): Student and teacher
            activations of this rank's first block (one with a weighted
            row); ``None`` when this rank's total is 0.
        w (Tensor, optional): That block's row weights ``(g, 1, p)``.
        local_total (float): This rank's row or weight total.
        c (int): Columns.
        device (torch.device): Device of the statistics.
        dtype (torch.dtype): Dtype of the blocks.

    Returns:
        tuple: ``(shift_s, shift_t)`` shaped ``(1, C, 1)`` in ``dtype``
        (``None`` when the global total is 0), and the global total.
    """
    # [column sums of s, of t, the first blocks' weight, the row total]
    buf = torch.zeros(2 * c + 2, dtype=torch.float64, device=device)
    if firsts is not None:
        ys, yt = firsts
        if w is None:
            buf[:c] = _column_sums(ys).double()
            buf[c:2 * c] = _column_sums(yt).double()
            buf[2 * c] = ys.shape[0] * ys.shape[2]
        else:
            buf[:c] = _column_sums(ys * w).double()
            buf[c:2 * c] = _column_sums(yt * w).double()
            buf[2 * c] = w.double().sum()
        buf[2 * c + 1] = local_total
    dist.all_reduce(buf)
    total = float(buf[2 * c + 1])
    if total <= 0:
        return None, total
    means = (buf[:2 * c] / buf[2 * c]).to(dtype).view(2, 1, c, 1)
    return (means[0], means[1]), total


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


def _student_floor(norm_t: Tensor, floor: float, eps: float) -> Tensor:
    """Lower bound of the student's centred norms: ``floor`` times the
    teacher's matching norms, at least ``eps``.

    Below it a Pearson correlation's gradient grows like one over the
    student's norm; at it the gradient is at most ``1 / (floor * |u_t|)``
    and points along the teacher's centred values.

    Args:
        norm_t (Tensor): The teacher's centred norms (rows or columns).
        floor (float): Relative floor; 0 gives the paper's ``eps`` clamp.
        eps (float): Absolute lower bound.

    Returns:
        Tensor: The bounds, shaped like ``norm_t``.
    """
    return (norm_t * floor).clamp_min(eps)


def _block_statistics(ys: Tensor, yt: Tensor, w: Optional[Tensor],
                      shifts: Tuple[Tensor, Tensor], rows: Tuple[Tensor, ...],
                      activation: str) -> Tensor:
    """Statistics of one block of activations, which it uses as scratch.

    Args:
        ys (Tensor): Student activations ``(g, C, p)``; overwritten.
        yt (Tensor): Teacher activations ``(g, C, p)``; overwritten.
        w (Tensor, optional): Row weights ``(g, 1, p)``.
        shifts (tuple[Tensor, Tensor]): ``(1, C, 1)`` column shifts of the
            student and the teacher.
        rows (tuple[Tensor, ...]): ``(g, p)`` outputs for each row's
            ``u_s . u_t``, ``|u_s|`` and ``|u_t|`` (u: row-centred).
        activation (str): ``'softmax'`` or ``'sigmoid'``.

    Returns:
        Tensor: ``(5, C)`` (weighted) column sums of ``d_s``, ``d_t``,
        ``d_s^2``, ``d_t^2`` and ``d_s d_t``, d being the shifted values.
    """
    us = _centre_rows(ys, activation)
    torch.linalg.vector_norm(us, dim=1, out=rows[1])
    ut = _centre_rows(yt, activation)
    torch.linalg.vector_norm(ut, dim=1, out=rows[2])
    torch.sum(us.mul_(ut), dim=1, out=rows[0])
    del us, ut
    ds, dt = ys.sub_(shifts[0]), yt.sub_(shifts[1])
    wds, wdt = (ds, dt) if w is None else (ds * w, dt * w)
    return torch.stack([
        _column_sums(wds),
        _column_sums(wdt),
        _column_sums(wds * ds),
        _column_sums(wdt * dt),
        _column_sums(wds * dt),
    ])


class _Coefficients(NamedTuple):
    """Per-column coefficients of the intra-class gradient, ``(1, C, 1)``."""
    a: Tensor
    b: Tensor
    const: Tensor
    hi_s: Tensor
    hi_t: Tensor


def _block_gradient(ys: Tensor, yt: Tensor, w: Optional[Tensor], row_a: Tensor,
                    row_b: Tensor, col: _Coefficients, activation: str,
                    in_place: bool) -> Tensor:
    """Gradient of one block w.r.t. the student's logits.

    Args:
        ys (Tensor): Student activations ``(g, C, p)``; with ``in_place``
            they are overwritten with the gradient.
        yt (Tensor): Teacher activations ``(g, C, p)``.
        w (Tensor, optional): Row weights ``(g, 1, p)``.
        row_a (Tensor): ``(g, 1, p)`` coefficient of the row-centred u_t.
        row_b (Tensor): ``(g, 1, p)`` coefficient of the row-centred u_s.
        col (_Coefficients): Column coefficients.
        activation (str): ``'softmax'`` or ``'sigmoid'``.
        in_place (bool): Write the gradient into ``ys``.

    Returns:
        Tensor: The block's gradient.
    """
    # Columns: a * (y_t - m_t) + b * (y_s - m_s), with m = hi + lo and
    # const = -(a * lo_t + b * lo_s).
    dy = torch.addcmul(col.const, yt - col.hi_t, col.a)
    dy.addcmul_(ys - col.hi_s, col.b)
    if w is not None:
        dy.mul_(w)
    dy.addcmul_(_centre_rows(yt, activation), row_a)
    del yt
    dy.addcmul_(_centre_rows(ys, activation), row_b)
    # Through the activation.
    if activation == 'softmax':
        dy.sub_((dy * ys).sum(dim=1, keepdim=True))
        local = ys
    else:
        local = 1.0 - ys
        local = ys.mul_(local) if in_place else local.mul_(ys)
    return local.mul_(dy) if in_place else dy.mul_(local)


class DISTTerms(torch.autograd.Function):
    """(inter, intra) of ``(G, C, P)`` logits; gradient for the student only.

    Forward keeps the student's activations (one tensor the size of the
    logits, float32) plus per-row and per-column statistics. Backward
    recomputes the teacher's activations block by block, writes the
    student's gradient analytically into the kept activations' storage and
    returns it, so the whole loss costs about one logits-sized tensor.
    Block temporaries live in the per-block helpers, so at most one block's
    are alive at a time. Its last input, ``world``, is 1 for per-process
    statistics or the size of the default process group whose rows it
    computes the terms over (see :func:`sync_world_size`).
    """

    @staticmethod
    def forward(ctx,
                student: Tensor,
                teacher: Tensor,
                weight: Optional[Tensor],
                activation: str,
                tau: float,
                eps: float,
                world: int = 1,
                floor: float = 0.0) -> Tuple[Tensor, Tensor]:
        g, c, p = student.shape
        device = student.device
        # float32 at least (half inputs), float64 kept for gradcheck.
        dtype = torch.promote_types(student.dtype, torch.float32)
        blocks = split_blocks((g, c, p), block_elements(device, dtype))
        total = float(g * p if weight is None else weight.double().sum())
        ctx.activation, ctx.tau, ctx.dtype = activation, tau, dtype
        ctx.world = world
        if weight is not None:
            if total > 0:
                blocks = _weighted_first(blocks, weight)
            weight = weight.view(g, 1, p)
        # With sync, the first block is activated before the loop (its
        # column sums make the common shift) and reused by it.
        firsts, first_w, shifts = None, None, None
        if world > 1:
            if total > 0:
                gs, ps = blocks[0]
                firsts = (_activate(student[gs, :, ps], activation, tau,
                                    dtype),
                          _activate(teacher[gs, :, ps], activation, tau,
                                    dtype))
                first_w = None if weight is None else weight[gs, :, ps]
            # Every rank takes part, an empty one too; afterwards all agree
            # on the global total, hence on the path below.
            shifts, total = _common_shifts(firsts, first_w, total, c, device,
                                           dtype)
        ctx.empty = total <= 0
        if ctx.empty:
            ctx.save_for_backward(student)
            zero = student.new_zeros((), dtype=dtype)
            return zero, zero.clone()
        # The backward pass recomputes the teacher's activations over the
        # same blocks, so they are bitwise the forward's.
        ctx.blocks, ctx.total = blocks, total

        y_student = torch.empty((g, c, p), device=device, dtype=dtype)
        row_dot = torch.empty(g, p, device=device, dtype=dtype)
        row_norm_s = torch.empty_like(row_dot)
        row_norm_t = torch.empty_like(row_dot)
        # Column sums of the values shifted by the first block's column
        # means (avoids cancellation in the variance), in float64; with sync
        # by the shift common to all ranks.
        sums = torch.zeros(5, c, dtype=torch.float64, device=device)
        for gs, ps in blocks:
            if firsts is not None:
                (ys, yt), firsts = firsts, None
            else:
                ys = _activate(student[gs, :, ps], activation, tau, dtype)
                yt = _activate(teacher[gs, :, ps], activation, tau, dtype)
            y_student[gs, :, ps] = ys
            w = None if weight is None else weight[gs, :, ps]
            if shifts is None:
                shifts = _column_means(ys, w), _column_means(yt, w)
            rows = row_dot[gs, ps], row_norm_s[gs, ps], row_norm_t[gs, ps]
            sums += _block_statistics(ys, yt, w, shifts, rows,
                                      activation).double()
            del ys, yt  # before the next block's are made
        shifts = torch.cat(shifts, dim=1).view(2, c).double()

        # Inter-class: one Pearson correlation per row (their mean summed in
        # float64, like the columns' sums).
        row_floor = _student_floor(row_norm_t, floor, eps)
        denom = (
            torch.maximum(row_norm_s, row_floor) * row_norm_t.clamp_min(eps))
        row_rho = row_dot / denom
        row_loss = 1.0 - row_rho.double()
        if weight is not None:
            row_loss = row_loss * weight.view(g, p)
        inter_sum = row_loss.sum()
        if world > 1:
            # The global batch's column sums (all around the common shift)
            # and inter-class numerator; total is already global.
            buf = torch.cat([sums.view(-1), inter_sum.view(1)])
            dist.all_reduce(buf)
            sums, inter_sum = buf[:-1].view(5, c), buf[-1]
        inter = (inter_sum / total).to(dtype)

        # Intra-class: one Pearson correlation per column. Student and
        # teacher stacked as (2, C): means, spreads (the centred norms).
        firsts, seconds = sums[:2], sums[2:4]
        sum_s, sum_t = firsts
        means = shifts + firsts / total
        spreads = (seconds - firsts.square() / total).clamp_min(0).sqrt()
        # Lower bounds of the student's and the teacher's spreads.
        col_floors = torch.stack([
            _student_floor(spreads[1], floor, eps),
            spreads.new_full((c, ), eps)
        ])
        norm_s, norm_t = torch.maximum(spreads, col_floors)
        col_rho = (sums[4] - sum_s * sum_t / total) / (norm_s * norm_t)
        intra = (1.0 - col_rho).mean().to(dtype)

        # d rho / d u_s = u_t / (|u_s| |u_t|) - rho * u_s / |u_s|^2; the
        # second part is the norm's, which passes no gradient while the norm
        # is held at its floor.
        row_a = 1.0 / denom
        row_b = torch.where(
            row_norm_s > row_floor,
            row_rho / torch.maximum(row_norm_s, row_floor).square(), 0.0)
        unclamped = spreads > col_floors
        col_a = 1.0 / (norm_s * norm_t)
        col_b = torch.where(unclamped[0], col_rho / norm_s.square(), 0.0)
        # Backward centres the columns by the mean in two parts, hi + lo, so
        # the centred values are as exact as float32 values can be. A
        # teacher column whose spread is clamped at eps keeps only hi: its
        # values equal the mean up to rounding, and lo times the huge col_a
        # would be noise (a student column at its floor has col_b = 0).
        his = means.to(dtype)
        los = torch.where(unclamped, means - his.double(), 0.0)
        # Not save_for_backward: backward overwrites it with the gradient.
        ctx.y_student = y_student
        ctx.save_for_backward(student, teacher, weight, row_a, row_b, col_a,
                              col_b, his, los)
        return inter, intra

    @staticmethod
    def backward(ctx, grad_inter: Tensor, grad_intra: Tensor):
        if ctx.empty:
            (student, ) = ctx.saved_tensors
            return (torch.zeros_like(student), None, None, None, None, None,
                    None, None)
        (student, teacher, weight, row_a, row_b, col_a, col_b, his,
         los) = ctx.saved_tensors
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
        # With sync, total is the global one and the gradient is the global
        # loss's for this rank's rows, times the world size: DDP divides the
        # ranks' summed gradients by it.
        scale_inter = grad_inter.to(dtype) / (ctx.total * tau)
        scale_intra = grad_intra.double() / (c * tau)
        if ctx.world > 1:
            scale_inter, scale_intra = (scale_inter * ctx.world,
                                        scale_intra * ctx.world)
        col_a = -scale_intra * col_a
        col_b = scale_intra * col_b
        his = his.view(2, 1, c, 1)
        col = _Coefficients(
            a=col_a.to(dtype).view(1, c, 1),
            b=col_b.to(dtype).view(1, c, 1),
            const=(-(col_a * los[1] + col_b * los[0])).to(dtype).view(1, c, 1),
            hi_s=his[0],
            hi_t=his[1])
        row_a = (-scale_inter * row_a).view(g, 1, p)
        row_b = (scale_inter * row_b).view(g, 1, p)
        if weight is not None:
            row_a, row_b = row_a * weight, row_b * weight
        for gs, ps in ctx.blocks:
            ys = (
                kept[gs, :, ps] if kept is not None else _activate(
                    student[gs, :, ps], activation, tau, dtype))
            block = _block_gradient(
                ys, _activate(teacher[gs, :, ps], activation, tau, dtype),
                None if weight is None else weight[gs, :, ps],
                row_a[gs, :, ps], row_b[gs, :, ps], col, activation, in_place)
            if not in_place:
                grad[gs, :, ps] = block
            del ys, block  # before the next block's are made
        return grad, None, None, None, None, None, None, None
