"""The DIST terms in one pass, with fewer kernel launches than the formula.

Where the whole ``(G, C, P)`` row view fits the device's one-pass budget
(:func:`mmdist.losses.blocks.one_pass_elements`), :class:`DISTFused`
computes both terms at once: student and teacher are stacked as
``(2, G, C, P)``, so every activation, centring, norm and product is one
operation for both, and backward writes the student's gradient analytically
from the kept activations. One forward and backward is fewer operations
(kernel launches on a GPU) than the published formulation's autograd graph,
and its value and gradient are those of
:func:`mmdist.losses.dist_spec.dist_spec`.

Memory: besides the kept activations (two logits-sized tensors) at most two
more logits-sized tensors are alive at a time (the centred values; the
gradient and one centred member), about four in all: under half the
published formulation's peak (in-place products; the gradient is
accumulated member by member).

Per-process statistics only: with ``sync`` the loss takes the streamed
function, whose two all-reduces are the protocol every rank follows
whatever its number of rows (see :mod:`mmdist.losses.dist_stream`), in a
single process too.
"""
import contextlib
from typing import Optional, Tuple

import torch
from torch import Tensor


def _without_autocast(device: torch.device):
    """Autocast off for ``device`` (the loss may be called inside an AMP
    forward, where e.g. ``linalg.vecdot`` would run in half precision)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, else float32 (without an aten call, which
    the launch count would see)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _coefficients(dot: Tensor, norms: Tensor, floor: float,
                  eps: float) -> Tuple[Tensor, Tensor]:
    """Pearson correlations and their gradient coefficients.

    Args:
        dot (Tensor): ``u_s . u_t`` of each row or column.
        norms (Tensor): ``(2, ...)``: ``|u_s|`` and ``|u_t|``.
        floor (float): The student norm's floor relative to the teacher's.
        eps (float): Lower clamp of each norm.

    Returns:
        tuple[Tensor, Tensor]: ``rho`` and ``(2, ...)`` coefficients ``k``
        with ``d(1 - rho) = k[0] * u_s - k[1] * u_t`` (the student's norm
        passes no gradient while held at its floor).
    """
    norm_s, norm_t = norms
    low = (norm_t * floor).clamp_min(eps)
    held = torch.maximum(norm_s, low)
    inv = (held * norm_t.clamp_min(eps)).reciprocal()
    rho = dot * inv
    return rho, torch.stack([(norm_s > low) * rho / held.square(), inv])


class DISTFused(torch.autograd.Function):
    """(inter, intra) of ``(G, C, P)`` logits with ``G * P > 0`` in one
    pass; gradient for the student only.

    Keeps the activations of both (``2 G C P`` values, float32 or float64)
    and the row and column coefficients. ``weight`` is ``(G, P)`` or None.
    """

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor,
                weight: Optional[Tensor], activation: str, tau: float,
                eps: float, floor: float) -> Tuple[Tensor, Tensor]:
        with _without_autocast(student.device):
            return DISTFused._forward(ctx, student, teacher, weight,
                                      activation, tau, eps, floor)

    @staticmethod
    def backward(ctx, grad_inter: Tensor, grad_intra: Tensor):
        with _without_autocast(grad_inter.device):
            return DISTFused._backward(ctx, grad_inter, grad_intra)

    @staticmethod
    def _forward(ctx, student: Tensor, teacher: Tensor,
                 weight: Optional[Tensor], activation: str, tau: float,
                 eps: float, floor: float) -> Tuple[Tensor, Tensor]:
        g, c, p = student.shape
        dtype = compute_dtype(student.dtype)
        if weight is not None and weight.dtype != dtype:
            weight = weight.to(dtype)
        if activation == 'softmax':
            # Written straight into the stacked tensor: no second copy.
            y = student.new_empty((2, g, c, p), dtype=dtype)
            for logits, out in zip((student, teacher), y):
                if tau != 1.0:  # divided in float32 (a bf16 teacher)
                    if logits.dtype != dtype:
                        logits = logits.to(dtype)
                    logits = logits / tau
                torch.softmax(logits, dim=1, dtype=dtype, out=out)
            row_means = None
            centre = 1.0 / c  # a softmax row sums to one
        else:
            y = torch.stack([student, teacher])
            if y.dtype != dtype:
                y = y.to(dtype)
            if tau != 1.0:
                y.div_(tau)
            y.sigmoid_()
            row_means = centre = y.mean(dim=2, keepdim=True)
        # Inter-class: rows, centred by row.
        u = y - centre
        row_norms = torch.linalg.vector_norm(u, dim=2)
        u_s, u_t = u
        row_dot = u_s.mul_(u_t).sum(dim=1)  # in place: no third temporary
        del u, u_s, u_t
        # Intra-class: columns, centred by column around a pivot (the
        # column's largest value, or that of a row of the largest weight),
        # then by the mean offset from it: a column whose (weighted) values
        # are all equal centres to exact zeros and passes exactly no
        # gradient, as in the streamed path, and backward centres exactly
        # as here.
        if weight is None:
            pivot = y.amax(dim=(1, 3), keepdim=True)
            d = y - pivot
            shift = d.mean(dim=(1, 3), keepdim=True)
        else:
            # All weights 0: both terms 0, and the gradient 0 (w = 0).
            total = weight.sum()
            some = total > 0
            held_total = torch.where(some, total, 1.0)
            w = weight.view(1, g, 1, p)
            row = weight.view(-1).argmax().view(1)
            pivot = y.index_select(1, row // p).index_select(3, row % p)
            d = y - pivot
            shift = (d * w).sum(dim=(1, 3), keepdim=True) / held_total
        d.sub_(shift)
        if weight is not None:
            d.mul_(w.sqrt())  # weighted (co)variances as plain ones
        col_norms = torch.linalg.vector_norm(d, dim=(1, 3))
        d_s, d_t = d
        col_dot = d_s.mul_(d_t).sum(dim=(0, 2))
        del d, d_s, d_t
        # Rows and columns together: one set of launches.
        rho, k = _coefficients(
            torch.cat([row_dot.view(-1), col_dot]),
            torch.cat([row_norms.view(2, -1), col_norms], dim=1), floor, eps)
        row_rho, col_rho = rho.split([g * p, c])
        row_k, col_k = k.split([g * p, c], dim=1)
        # The backward's factors but the upstream gradients: the means'
        # 1 / rows (1 / total weight) and 1 / C, and 1 / tau.
        if weight is None:
            inter = 1 - row_rho.mean()
            row_k = row_k / (g * p * tau)
        else:
            inter = (weight.view(-1) * (1 - row_rho)).sum() / held_total
            row_k = row_k / (held_total * tau)
        col_k = col_k / (c * tau)
        intra = 1 - col_rho.mean()
        if weight is not None:
            intra = intra * some
        ctx.input_dtype = student.dtype
        ctx.save_for_backward(y, row_means, pivot,
                              shift, row_k.view(2, g, 1, p),
                              col_k.view(2, 1, c, 1), weight)
        return inter, intra

    @staticmethod
    def _backward(ctx, grad_inter: Tensor, grad_intra: Tensor):
        y, row_means, pivot, shift, row_k, col_k, weight = ctx.saved_tensors
        # d(1 - rho) of each row and column times the upstream gradients,
        # over centred values, member by member (one temporary besides the
        # gradient): a coefficient is large where a norm is small (up to
        # ~1 / eps**2 for a constant teacher column, whose centred values
        # are exact zeros), and a * y + const would cancel into noise there.
        (c_s, c_t), (r_s, r_t) = col_k * grad_intra, row_k * grad_inter
        (y_s, y_t), (p_s, p_t), (m_s, m_t) = y, pivot, shift
        grad = (y_s - p_s).sub_(m_s).mul_(c_s)
        grad.addcmul_((y_t - p_t).sub_(m_t), c_t, value=-1)
        if row_means is None:
            # Softmax: the rows' centres (1 / C) as one per-row constant, no
            # temporary. Its backward removes a constant only up to rounding
            # of the near one-hot rows' large entries: left out, the
            # gradient of saturated rows loses up to 1e-3 of itself.
            grad.addcmul_(y_s, r_s).addcmul_(y_t, r_t, value=-1)
            grad.add_(r_t - r_s, alpha=1.0 / y_s.shape[1])
        else:
            centre_s, centre_t = row_means
            grad.addcmul_(y_s - centre_s, r_s)
            grad.addcmul_(y_t - centre_t, r_t, value=-1)
        if weight is not None:
            grad.mul_(weight.view(weight.shape[0], 1, -1))
        # Through the activation, in place.
        grad.mul_(y_s)
        if row_means is None:
            grad.addcmul_(y_s, grad.sum(dim=1, keepdim=True), value=-1)
        else:
            grad.addcmul_(grad, y_s, value=-1)
        if grad.dtype != ctx.input_dtype:
            grad = grad.to(ctx.input_dtype)
        return grad, None, None, None, None, None, None
