"""Stop a diverged run instead of training on (and saving) NaN weights.

A learning rate far too high, or an overflow that reaches the weights,
turns every later loss into NaN; MMEngine goes on training, validates to an
empty result, writes checkpoints full of NaN (removing the good ones beyond
``max_keep_ckpts``) and exits with status 0. :class:`DivergenceGuardHook`
stops such a run with :class:`TrainingDiverged` naming the iteration and
the checkpoint to restart from: the newest one written before the loss
began to grow (newer ones are finite but already damaged), or none;
:class:`~mmdist.engine.SafeCheckpointHook` never writes (or rotates) a
checkpoint from non-finite weights.
"""
import math
import os.path as osp
from collections import deque
from typing import Dict, List, Optional, Tuple

import torch
from mmengine import dist
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper
from torch import nn

from mmdist.registry import HOOKS
from mmdist.utils.checkpoint import load_local_checkpoint
from .resume import checkpoint_candidates


class TrainingDiverged(FloatingPointError):
    """Training stopped: its loss or its weights are no longer finite.

    Args:
        message (str): What happened and what to do.
        restart_from (str, optional): The checkpoint to restart from
            (weights only, fresh optimizer and schedule); None: from
            scratch.
        learning_rate (float, optional): The learning rate when training
            stopped.
    """

    def __init__(self,
                 message: str,
                 restart_from: Optional[str] = None,
                 learning_rate: Optional[float] = None) -> None:
        super().__init__(message)
        self.restart_from = restart_from
        self.learning_rate = learning_rate


def current_lr(runner) -> Optional[float]:
    """The learning rate of the iteration that just ran, if known."""
    # The logged value: the scheduler may already have stepped past it.
    logged = runner.message_hub.log_scalars.get('train/lr')
    if logged is not None:
        return float(logged.current())
    try:
        rates = runner.optim_wrapper.get_lr()
        return float(next(iter(rates.values()))[0])
    except Exception:  # no optimizer yet, or an unusual wrapper
        return None


def stop_diverged(runner, message: str, onset: Optional[int],
                  losses: Dict[int, float]) -> None:
    """Log and raise :class:`TrainingDiverged` with the checkpoint advice.

    Args:
        runner (Runner): The runner.
        message (str): What happened.
        onset (int, optional): See :func:`checkpoint_advice`.
        losses (dict[int, float]): See :func:`checkpoint_advice`.

    Raises:
        TrainingDiverged: Always.
    """
    advice, restart_from = checkpoint_advice(runner, onset, losses)
    lr = current_lr(runner)
    lr_note = (f' The learning rate of the last iteration was {lr:.4g}.'
               if lr is not None else '')
    message = f'{message} {advice}{lr_note}'
    runner.logger.error(message)
    raise TrainingDiverged(message, restart_from, lr)


def nonfinite_weights(model: nn.Module, limit: int = 3) -> List[str]:
    """Names of the floating-point parameters and buffers holding inf or
    NaN.

    Args:
        model (nn.Module): The model (a wrapper is unwrapped; a distiller's
            teacher is not among its parameters).
        limit (int): Name at most this many. Defaults to 3.

    Returns:
        list[str]: The first ``limit`` such names; empty when all are
        finite.
    """
    if is_model_wrapper(model):
        model = model.module
    named = [(name, tensor)
             for name, tensor in (list(model.named_parameters()) +
                                  list(model.named_buffers()))
             if tensor.is_floating_point()]
    if not named:
        return []
    # One flag per tensor, read back once.
    flags = torch.stack([torch.isfinite(t.detach()).all()
                         for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, flags.tolist())
            if not ok][:limit]


def largest_weight(path: str) -> Tuple[float, str]:
    """The largest absolute value in a checkpoint's weights, and where.

    Args:
        path (str): A local checkpoint (MMEngine's layout, or a bare state
            dict).

    Returns:
        tuple[float, str]: The value (inf or nan when a weight is not
        finite) and the tensor's name.
    """
    ckpt = load_local_checkpoint(path, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    largest, where = 0.0, ''
    for name, tensor in state.items():
        if not (isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point() and tensor.numel()):
            continue
        if not bool(torch.isfinite(tensor).all()):
            return math.nan, name
        value = float(tensor.detach().abs().max())
        if value > largest:
            largest, where = value, name
    return largest, where


def run_checkpoints(runner) -> List[Tuple[int, str]]:
    """The checkpoints of this run on disk, by the iterations they hold.

    Args:
        runner (Runner): The runner; its checkpoint hook says where they
            are and how they are named.

    Returns:
        list[tuple[int, str]]: ``(iterations, path)``, newest first; empty
        without a checkpoint hook or with remote storage.
    """
    for hook in getattr(runner, 'hooks', ()):
        if not isinstance(hook, CheckpointHook):
            continue
        out_dir = str(hook.out_dir or runner.work_dir)
        if '://' in out_dir:
            return []
        if hasattr(hook, '_templates'):  # mmdist.SafeCheckpointHook
            templates = hook._templates(runner)
        else:
            scale = len(runner.train_dataloader) if hook.by_epoch else 1
            templates = [(hook.filename_tmpl, scale)]
        return checkpoint_candidates([out_dir], templates)
    return []


def _describe(path: str) -> str:
    """What a checkpoint's weights look like, in words."""
    try:
        value, name = largest_weight(path)
    except Exception as error:  # unreadable: say so, advise nothing from it
        return f'unreadable ({type(error).__name__}: {error})'
    if not math.isfinite(value):
        return f'weights not finite ({name})'
    return f'finite weights, largest |value| {value:.4g} ({name})'


def _onset_words(onset: int, losses: Dict[int, float]) -> str:
    """How the divergence began, in words."""
    value, before = losses.get(onset), losses.get(onset - 1)
    if value is None:
        return f'the weights after iteration {onset - 1} are not finite'
    if not math.isfinite(value):
        return (f'the weights after iteration {onset - 1} gave the loss '
                f'{value} at iteration {onset}')
    return (f'the loss grew from iteration {onset} on ({before:.4g} -> '
            f'{value:.4g}) until it was not finite')


def _loss_note(iters: int, losses: Dict[int, float]) -> str:
    """The loss that a checkpoint's weights gave, when recorded."""
    loss = losses.get(iters + 1)
    if loss is None:
        return ''
    return (f'; the loss computed from its weights at iteration {iters + 1} '
            f'was {loss:.4g}')


def checkpoint_advice(runner, onset: Optional[int],
                      losses: Dict[int, float]) -> Tuple[str, Optional[str]]:
    """Which checkpoint of a diverged run to restart from, truthfully.

    A checkpoint holding ``k`` iterations has weights that computed the
    loss of iteration ``k + 1``; it predates the divergence when that
    iteration comes before ``onset``. Newer checkpoints are finite
    (:class:`~mmdist.engine.SafeCheckpointHook` writes no other) but
    already damaged: resuming from them diverges again.

    Args:
        runner (Runner): The runner.
        onset (int, optional): The first iteration whose loss took part in
            the divergence (the loss grew from there on); None when
            unknown.
        losses (dict[int, float]): Recorded total losses by iteration.

    Returns:
        tuple[str, str | None]: Sentences for the error message, and the
        checkpoint to restart from (weights only), or None: restart from
        scratch.
    """
    found = run_checkpoints(runner)
    if onset is None:
        if not found:
            return 'No checkpoint of this run was written before.', None
        iters, path = found[0]
        return (f'Whether {path} (after iteration {iters}; '
                f'{_describe(path)}) predates the divergence is unknown: no '
                'mmdist.DivergenceGuardHook recorded the losses. Restart '
                'from scratch with a lower learning rate, or from its '
                f'weights (load_from={path} resume=False) if they look '
                'sound.'), None
    good = [(k, p) for k, p in found if k + 1 < onset]
    late = [(k, p) for k, p in found if k + 1 >= onset]
    began = _onset_words(onset, losses)
    notes = []
    if late:
        iters, path = late[0]
        notes.append(
            f'{path} (after iteration {iters}) was written after the '
            f'divergence began ({_describe(path)}'
            f'{_loss_note(iters, losses)}): its weights are already on the '
            'way to divergence, do not resume from it.')
    if not good:
        where = (f' left in {osp.dirname(found[0][1])}' if found else '')
        notes.append(
            f'No checkpoint{where} predates the divergence ({began}): '
            'restart from scratch with a lower learning rate.')
        return ' '.join(notes), None
    iters, path = good[0]
    # The best loss before it, for judging the loss its weights gave.
    earlier = [(v, i) for i, v in losses.items()
               if i <= iters and math.isfinite(v)]
    lowest = (f'; the lowest loss before it was {min(earlier)[0]:.4g} at '
              f'iteration {min(earlier)[1]}' if earlier else '')
    notes.append(
        f'The last checkpoint before the divergence ({began}) is {path} '
        f'(after iteration {iters}; {_describe(path)}'
        f'{_loss_note(iters, losses)}{lowest}). Restart from its weights '
        'with a fresh optimizer and schedule at a lower learning rate: '
        f'load_from={path} resume=False (--resume would restore the '
        "optimizer's and the schedule's state, and the old learning rate "
        'with them).')
    return ' '.join(notes), path


@HOOKS.register_module()
class DivergenceGuardHook(Hook):
    """Stop training when its total loss or its weights stop being finite.

    After every training iteration (all ranks agree on the outcome):

    - a step whose total ``loss`` is not finite counts; a finite loss
      resets the count. When it counts, the weights are checked: non-finite
      weights never recover, so training stops at once; otherwise it stops
      when ``max_nonfinite_iters`` such steps come in a row (a NaN loss with
      finite weights is what an fp16 forward overflow under AMP gives, and
      the loss scaler skips that step).
    - a step whose loss is finite but whose gradient is not (under AMP the
      loss scaler skips it and lowers the scale: normal, and the weights do
      not change) does not count.

    It stops with :class:`TrainingDiverged` naming the iteration, the first
    non-finite weights and the checkpoint to restart from (weights only, a
    fresh optimizer and schedule at a lower learning rate): the newest
    checkpoint written before the loss began to grow, from the losses it
    records (see :meth:`onset` and
    :func:`checkpoint_advice`), or none. It runs before the
    checkpoint hook, so no checkpoint is written from that iteration; the
    checkpoint hook (:class:`~mmdist.engine.SafeCheckpointHook`) refuses
    non-finite weights on its own as well.

    ``tools/train.py`` adds it to every run (see
    :func:`~mmdist.engine.enable_fault_tolerance`); elsewhere add
    ``dict(type='mmdist.DivergenceGuardHook')`` to ``custom_hooks``.

    Args:
        max_nonfinite_iters (int): Iterations in a row with a non-finite
            total loss (and finite weights) before training stops.
            Defaults to 5.
    """

    # After the logger (the diverged iteration is still logged), before
    # the checkpoint hook.
    priority = 'LOW'
    #: Iterations of loss history kept.
    HISTORY = 10000
    #: A grown loss is above this many losses before it.
    GROWTH_WINDOW = 10

    def __init__(self, max_nonfinite_iters: int = 5) -> None:
        if not isinstance(max_nonfinite_iters, int) or isinstance(
                max_nonfinite_iters, bool) or max_nonfinite_iters < 1:
            raise ValueError('DivergenceGuardHook: max_nonfinite_iters must '
                             'be a positive integer, got '
                             f'{max_nonfinite_iters!r}')
        self.max_nonfinite_iters = max_nonfinite_iters
        self.in_a_row = 0
        self._first: Optional[int] = None
        # (iteration, total loss) of the recent iterations: where the loss
        # began to grow decides which checkpoint predates a divergence.
        self._history: deque = deque(maxlen=self.HISTORY)

    @property
    def losses(self) -> Dict[int, float]:
        """Recorded total losses by iteration (1-based)."""
        return dict(self._history)

    def onset(self, first_nonfinite: int) -> int:
        """The iteration from which the loss grew until it was not finite.

        A loss counts as grown when it is above each of the
        :attr:`GROWTH_WINDOW` losses before it (a new high: noise within
        the recent range does not count).

        Args:
            first_nonfinite (int): The first iteration whose loss was not
                finite (or would not be: the weights after the iteration
                before are not finite).

        Returns:
            int: The first iteration of the run of grown losses that ends
            at ``first_nonfinite``; ``first_nonfinite`` itself when the loss
            before it had not grown.
        """
        losses = self.losses
        onset = first_nonfinite
        while True:
            value = losses.get(onset - 1)
            window = [
                losses[i]
                for i in range(onset - 1 - self.GROWTH_WINDOW, onset - 1)
                if i in losses
            ]
            # NaN compares False: an earlier non-finite loss ends the run.
            if value is None or not math.isfinite(value) or not window or (
                    not all(value > w for w in window)):
                return onset
            onset -= 1

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        loss = (outputs or {}).get('loss')
        if loss is None:
            return
        value = float(loss.detach().float().sum()) if isinstance(
            loss, torch.Tensor) else float(loss)
        iteration = runner.iter + 1
        self._history.append((iteration, value))
        if not self._any_rank(not math.isfinite(value)):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row == 1:
            self._first = iteration
        weights = nonfinite_weights(runner.model)
        if not weights and self.in_a_row < self.max_nonfinite_iters:
            runner.logger.warning(
                f'iteration {iteration}: the total loss is {value} '
                f'({self.in_a_row} in a row; training stops at '
                f'{self.max_nonfinite_iters}); the weights are still '
                'finite')
            return
        span = (f'iteration {iteration}' if self._first == iteration else
                f'iterations {self._first} to {iteration}')
        what = (f'the weights are not finite ({", ".join(weights)})'
                if weights else 'the weights are still finite')
        stop_diverged(
            runner,
            f'Training diverged: the total loss was not finite ({value}) in '
            f'{self.in_a_row} iteration(s) in a row ({span}) and {what}. '
            f'Stopped after iteration {iteration}; no checkpoint is written '
            'from these weights.', self.onset(self._first), self.losses)

    @staticmethod
    def _any_rank(flag: bool) -> bool:
        """``flag`` of any rank, the same answer on every rank."""
        if dist.get_world_size() == 1:
            return flag
        value = torch.tensor([float(flag)])
        dist.all_reduce(value, op='max')
        return bool(value.item())
