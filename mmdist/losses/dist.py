"""DIST: relation loss by Pearson correlation (Huang et al., NeurIPS 2022).

With student and teacher predictions ``Y = act(Z / tau)`` arranged as rows
(instances) by columns (classes):

- inter-class term: mean over rows of ``1 - pearson(Y_s[i, :], Y_t[i, :])``;
- intra-class term: mean over columns of ``1 - pearson(Y_s[:, j], Y_t[:, j])``;
- loss: ``loss_weight * tau**2 * (beta * inter + gamma * intra)``.

Pearson correlation is the cosine of the mean-centred vectors ``u_s`` and
``u_t``. The paper (and the authors' code) divides by ``|u_s| |u_t|``, each
clamped below at ``eps``: its gradient grows like ``1 / |u_s|`` as a student
row or column goes to a constant, which is where a student with a
zero-initialised head (ViT, DeiT) starts, and is orders of magnitude
above cross-entropy's there. By default the student's norm has a floor
relative to the teacher's (``floor``, kappa below; 0.05 for softmax, 0.001
for sigmoid, whose slope already scales the gradient down)::

    rho = u_s . u_t / (max(|u_s|, kappa |u_t|, eps) * max(|u_t|, eps))

- wherever ``|u_s| >= kappa |u_t|`` this is the paper's value exactly;
- below it the denominator is ``kappa |u_t|^2``: the value is continuous and
  stays in ``[-1, 1]``, the gradient is ``u_t / (kappa |u_t|^2)``, bounded
  by ``1 / (kappa |u_t|)`` and pointing at the teacher's pattern;
- ``floor=0`` is the paper's form (eps clamp only).

The floor applies to each row (inter-class) and each column (intra-class),
computed over the same rows as the term (the global batch with ``sync``),
so both block policies and ``sync`` give the same value.

Its definition is :func:`mmdist.losses.dist_spec.dist_spec`, the published
formulation in autograd code with the floor and the weights; the loss
computes the same value and gradient by the fastest of two paths, chosen
per call by size, both float32 whatever the input dtype (float64 inputs
stay float64):

- one pass (:mod:`mmdist.losses.dist_fused`) where the whole input fits the
  device's one-pass budget (:func:`mmdist.losses.blocks.one_pass_elements`:
  every common input on a GPU, one cache-sized block on a CPU): fewer
  operations, hence kernel launches, than the published formulation, at
  about half its peak memory;
- streamed over blocks (:mod:`mmdist.losses.dist_stream`) where it does not,
  and always with ``sync`` (with or without a process group, so that a
  single process computes what the ranks do): about one logits-sized tensor
  of memory.

Row weights (``weight``): the inter-class term is the weighted mean over rows
``sum_i w_i (1 - rho_i) / sum_i w_i``; the intra-class term uses weighted
column means and weighted (co)variances,
``sum_i w_i (y_s - mu_s)(y_t - mu_t)``.
A zero weight therefore drops a row from both terms exactly; if every weight
is zero both terms are 0 and the gradient is 0.

Global batch (``sync=True``): the paper computes both terms over each
process's own rows, so with DDP the intra-class term correlates each class
over one GPU's batch (2 images in detection, 32 on ImageNet). With ``sync``
under an initialised process group, both terms are computed over all
processes' rows together, exactly as one process would over the
concatenated batch (weights included): two all-reduces of ``2 * C + 2`` and
``5 * C + 1`` float64 numbers per call. Every rank gets the global value,
and its gradient is scaled so that DDP's averaging gives the global loss's
gradient. Every rank must call the loss the same number of times per step.
Without a process group (or with one process) it changes nothing.
"""
import contextlib
import warnings
from typing import Dict, Iterator, Optional, Tuple, Union

from torch import Tensor, nn

from mmdist.registry import MODELS
from .blocks import one_pass_elements
from .dist_fused import DISTFused, compute_dtype
from .dist_stream import ACTIVATIONS, DISTTerms, sync_world_size
from .rows import as_rows, check_number, check_pair, weight_as_rows

# Per activation: sigmoid's own slope already damps the gradient, so its
# floor is lower (measurements: docs/en/notes/benchmarks.md, Stable DIST).
DEFAULT_FLOORS = {'softmax': 0.05, 'sigmoid': 0.001}
PATHS = ('fused', 'streamed')
_forced_path: Optional[str] = None


def resolve_floor(caller: str, floor: Optional[float],
                  activation: str) -> float:
    """``floor``, or the activation's default (:data:`DEFAULT_FLOORS`)
    when it is None, checked to be a finite number >= 0."""
    if floor is None:
        return DEFAULT_FLOORS[activation]
    return check_number(caller, 'floor', floor)


def dist_terms(student: Tensor,
               teacher: Tensor,
               weight: Optional[Tensor] = None,
               activation: str = 'softmax',
               tau: float = 1.0,
               num_classes: Optional[int] = None,
               eps: float = 1e-8,
               sync: bool = False,
               floor: Optional[float] = None) -> Tuple[Tensor, Tensor]:
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
        sync (bool): Compute both terms over the rows of every process of
            the default process group, when one is initialised; the
            gradient is then scaled for DDP's averaging (see the module
            docstring).
        floor (float, optional): Lower bound of each student centred norm
            relative to the teacher's matching one (see the module
            docstring); 0 gives the paper's exact form, None the
            activation's default (:data:`DEFAULT_FLOORS`).

    Returns:
        tuple[Tensor, Tensor]: float32 scalars ``(inter, intra)``, each in
        ``[0, 2]``; with ``sync`` the global batch's, the same on every
        rank.
    """
    check_pair(student, teacher)
    if activation not in ACTIVATIONS:
        raise ValueError(f'activation must be one of {ACTIVATIONS}, '
                         f'got {activation!r}')
    tau = check_number('dist_terms', 'tau', tau, positive=True)
    eps = check_number('dist_terms', 'eps', eps, positive=True)
    floor = resolve_floor('dist_terms', floor, activation)
    rows_s, anchors = as_rows(student, num_classes)
    rows_t, _ = as_rows(teacher.detach(), num_classes)
    rows_w = None
    if weight is not None:
        rows_w = weight_as_rows(weight, student.shape, rows_s, anchors)
        if bool((rows_w < 0).any()):
            raise ValueError('weight must be non-negative')
    # With sync, every rank and a single process (no group) take the
    # streamed function: the same numerics whatever the group.
    if not sync and fits_one_pass(rows_s):
        return DISTFused.apply(rows_s, rows_t, rows_w, activation, tau, eps,
                               floor)
    return DISTTerms.apply(rows_s, rows_t, rows_w, activation, tau, eps,
                           sync_world_size(sync), floor)


def fits_one_pass(rows: Tensor) -> bool:
    """Whether :class:`DISTFused` computes ``(G, C, P)`` rows: some rows,
    and all of them within the device's one-pass budget (unless
    :func:`force_path` says otherwise)."""
    if rows.numel() == 0:
        return False
    if _forced_path is not None:
        return _forced_path == 'fused'
    return rows.numel() <= one_pass_elements(rows.device,
                                             compute_dtype(rows.dtype))


@contextlib.contextmanager
def force_path(path: str) -> Iterator[None]:
    """Compute every :func:`dist_terms` call without ``sync`` inside the
    ``with`` block by ``path``, whatever its size: ``'fused'`` (one pass) or
    ``'streamed'`` (blocks of the block policy), so that tests hold both
    paths to the specification.

    Args:
        path (str): ``'fused'`` or ``'streamed'``.
    """
    global _forced_path
    if path not in PATHS:
        raise ValueError(f'path must be one of {PATHS}, got {path!r}')
    previous, _forced_path = _forced_path, path
    try:
        yield
    finally:
        _forced_path = previous


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
        sync (bool): Compute both terms over the global batch (all
            processes' rows) under an initialised process group, instead of
            per process as the paper does; costs two small all-reduces per
            call (about ``7 * C`` float64 numbers). Every rank must call the
            loss equally often. Defaults to False.
        floor (float, optional): Lower bound of each student centred norm
            (row and column) relative to the teacher's matching one, which
            bounds the gradient of a nearly constant student (module
            docstring). 0 gives the paper's exact form. Defaults to None:
            the activation's default, 0.05 for softmax and 0.001 for
            sigmoid (:data:`DEFAULT_FLOORS`).
    """

    def __init__(self,
                 beta: float = 1.0,
                 gamma: float = 1.0,
                 tau: float = 1.0,
                 loss_weight: float = 1.0,
                 activation: str = 'softmax',
                 num_classes: Optional[int] = None,
                 eps: float = 1e-8,
                 sync: bool = False,
                 floor: Optional[float] = None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f'DISTLoss activation must be one of '
                             f'{ACTIVATIONS}, got {activation!r}')
        self.beta = check_number('DISTLoss', 'beta', beta)
        self.gamma = check_number('DISTLoss', 'gamma', gamma)
        self.tau = check_number('DISTLoss', 'tau', tau, positive=True)
        self.loss_weight = check_number('DISTLoss', 'loss_weight', loss_weight)
        self.activation = activation
        self.num_classes = num_classes
        self.eps = check_number('DISTLoss', 'eps', eps, positive=True)
        if not isinstance(sync, bool):
            raise ValueError(f'DISTLoss sync must be True or False, '
                             f'got {sync!r}')
        self.sync = sync
        self.floor = resolve_floor('DISTLoss', floor, activation)
        self._class_count_checked = False

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
        if not self._class_count_checked:
            self._class_count_checked = True
            warn_degenerate_classes(student, self.num_classes, self.beta)
        inter, intra = dist_terms(student, teacher, weight, self.activation,
                                  self.tau, self.num_classes, self.eps,
                                  self.sync, self.floor)
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
                f'num_classes={self.num_classes}, sync={self.sync}, '
                f'floor={self.floor}')


def warn_degenerate_classes(student: Tensor, num_classes: Optional[int],
                            beta: float) -> None:
    """Warn when rows are too short for the inter-class term.

    A Pearson correlation of two values is always +-1 and of one value is
    undefined (0 here), so with one or two classes per row the inter-class
    term is constant and passes (almost) no gradient.

    Args:
        student (Tensor): Student logits, as given to :func:`dist_terms`.
        num_classes (int, optional): Columns per row (see :func:`as_rows`).
        beta (float): Weight of the inter-class term; no warning when 0.
    """
    if beta == 0 or student.dim() < 2:
        return
    classes = num_classes or student.shape[1]
    if classes <= 2:
        warnings.warn(
            f'DISTLoss: rows of {classes} class(es) (student logits of '
            f'shape {tuple(student.shape)}): the inter-class Pearson '
            'correlation of so few values is constant (+-1 or 0), so that '
            'term passes (almost) no gradient; distil a head with 3 or '
            'more classes, or set beta=0.',
            stacklevel=3)
