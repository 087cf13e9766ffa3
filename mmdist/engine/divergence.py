"""Stop a diverged run instead of training on (and saving) NaN weights.

A learning rate far too high, or an overflow that reaches the weights,
turns every later loss into NaN; MMEngine goes on training, validates to an
empty result, writes checkpoints full of NaN (removing the good ones beyond
``max_keep_ckpts``) and exits with status 0. :class:`DivergenceGuardHook`
stops such a run with :class:`TrainingDiverged` naming the iteration and
the last good checkpoint; :class:`~mmdist.engine.SafeCheckpointHook` never
writes (or rotates) a checkpoint from non-finite weights.
"""
import math
from typing import List, Optional

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from mmdist.registry import HOOKS


class TrainingDiverged(FloatingPointError):
    """Training stopped: its loss or its weights are no longer finite."""


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
    named = [(name, tensor) for name, tensor in (
        list(model.named_parameters()) + list(model.named_buffers()))
             if tensor.is_floating_point()]
    if not named:
        return []
    # One flag per tensor, read back once.
    flags = torch.stack(
        [torch.isfinite(t.detach()).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, flags.tolist())
            if not ok][:limit]


def last_checkpoint_note(path: Optional[str]) -> str:
    """Where the last good checkpoint is, in words.

    Args:
        path (str, optional): The run's newest checkpoint, if any.

    Returns:
        str: One or two sentences for an error message.
    """
    if not path:
        return 'No checkpoint of this run was written before.'
    return (f'The last good checkpoint is {path}: continue from it with '
            f'--resume {path} after lowering the learning rate (or '
            'clipping gradients).')


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
    non-finite weights and the last good checkpoint. It runs before the
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

    def __init__(self, max_nonfinite_iters: int = 5) -> None:
        if not isinstance(max_nonfinite_iters, int) or isinstance(
                max_nonfinite_iters, bool) or max_nonfinite_iters < 1:
            raise ValueError('DivergenceGuardHook: max_nonfinite_iters must '
                             'be a positive integer, got '
                             f'{max_nonfinite_iters!r}')
        self.max_nonfinite_iters = max_nonfinite_iters
        self.in_a_row = 0
        self._first: Optional[int] = None

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
        if not self._any_rank(not math.isfinite(value)):
            self.in_a_row = 0
            return
        iteration = runner.iter + 1
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
        last = runner.message_hub.get_info('last_ckpt')
        message = (
            f'Training diverged: the total loss was not finite ({value}) in '
            f'{self.in_a_row} iteration(s) in a row ({span}) and {what}. '
            f'Stopped after iteration {iteration}; no checkpoint is written '
            f'from these weights. {last_checkpoint_note(last)}')
        runner.logger.error(message)
        raise TrainingDiverged(message)

    @staticmethod
    def _any_rank(flag: bool) -> bool:
        """``flag`` of any rank, the same answer on every rank."""
        if dist.get_world_size() == 1:
            return flag
        value = torch.tensor([float(flag)])
        dist.all_reduce(value, op='max')
        return bool(value.item())
