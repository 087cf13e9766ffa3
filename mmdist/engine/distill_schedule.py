"""Distillation schedules: one multiplier on every distillation term.

``DistillWeightHook`` sets the distiller's ``distill_weight`` before every
training iteration from the runner's progress (iteration or epoch), so a
resumed run continues the same curve. While the multiplier is 0 the teacher
does not run at all: the step costs what the student alone costs.

Example (``custom_hooks`` of any distillation config)::

    custom_hooks = [
        # ramp the distillation terms from 0 to 1 over 500 iterations
        dict(type='mmdist.DistillWeightHook', schedule='linear', end=500),
        # or, in an epoch-based run: stop distilling after epoch 20
        # dict(type='mmdist.DistillWeightHook', by_epoch=True, stop=20),
    ]

``by_epoch=True`` needs an epoch-based train loop: an iteration-based one
(MMSeg's configs, ``InfiniteSampler``) never completes an epoch, so the hook
refuses it before the first step and says how many iterations one pass over
the training data takes.
"""
import math
from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop

from mmdist.registry import HOOKS

SCHEDULES = ('constant', 'linear', 'cosine', 'step')


def _check_number(key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value < 0:
        raise ValueError(f'DistillWeightHook: {key} must be a finite '
                         f'non-negative number, got {value!r}')


@HOOKS.register_module()
class DistillWeightHook(Hook):
    """Schedule a multiplier of every distillation term's loss.

    With progress ``p`` (``runner.iter``, or ``runner.epoch`` with
    ``by_epoch=True``):

    - ``constant``: ``weight``;
    - ``linear``: ``start_weight`` at ``begin`` rising linearly to
      ``weight`` at ``end`` (a warm-up), ``weight`` afterwards;
    - ``cosine``: ``weight`` at ``begin`` falling along a half cosine to
      ``min_weight`` at ``end``, ``min_weight`` afterwards;
    - ``step``: ``weight * gamma ** k`` after the ``k``-th of
      ``milestones``;

    and 0 from ``stop`` on (distillation stopped: the teacher no longer
    runs; ``stop=0`` trains the student alone with the distillation
    config, for ``constant`` and ``step``). Before ``begin`` the ``linear``
    schedule holds ``start_weight`` and the others ``weight``. Whenever the
    multiplier is 0 the teacher does not run.

    When the multiplier drops to 0, every smoothed loss of the log
    restarts its window, so that the logged ``loss`` stays the sum of the
    logged parts and the distillation losses show 0 at once.

    Args:
        schedule (str): One of ``constant``, ``linear``, ``cosine``,
            ``step``. Defaults to ``constant``.
        by_epoch (bool): Count progress in epochs; needs an epoch-based
            train loop. Defaults to False.
        weight (float): The multiplier (``constant``, the end of a warm-up,
            the start of a decay). Defaults to 1.
        start_weight (float): ``linear``: the multiplier at ``begin``.
            Defaults to 0.
        min_weight (float): ``cosine``: the multiplier at ``end``.
            Defaults to 0.
        begin (int): Where ``linear`` / ``cosine`` start. Defaults to 0.
        end (int, optional): Where ``linear`` / ``cosine`` end; required
            by them.
        milestones (list[int], optional): ``step``: where the multiplier is
            multiplied by ``gamma``.
        gamma (float): ``step``: the factor. Defaults to 0.1.
        stop (int, optional): Stop distilling from this iteration / epoch
            (``linear`` / ``cosine``: after ``begin``).
    """

    priority = 'NORMAL'

    def __init__(self,
                 schedule: str = 'constant',
                 by_epoch: bool = False,
                 weight: float = 1.0,
                 start_weight: float = 0.0,
                 min_weight: float = 0.0,
                 begin: int = 0,
                 end: Optional[int] = None,
                 milestones: Optional[Sequence[int]] = None,
                 gamma: float = 0.1,
                 stop: Optional[int] = None) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f'DistillWeightHook: schedule must be one of '
                             f'{SCHEDULES}, got {schedule!r}')
        for key, value in (('weight', weight), ('start_weight', start_weight),
                           ('min_weight',
                            min_weight), ('begin', begin), ('gamma', gamma)):
            _check_number(key, value)
        _check_number('end', end, allow_none=True)
        _check_number('stop', stop, allow_none=True)
        if schedule in ('linear', 'cosine'):
            if end is None:
                raise ValueError(f'DistillWeightHook: schedule={schedule!r} '
                                 'needs end')
            if end <= begin:
                raise ValueError(f'DistillWeightHook: end ({end}) must be '
                                 f'after begin ({begin})')
        milestones = list(milestones or [])
        if schedule == 'step':
            if not milestones:
                raise ValueError("DistillWeightHook: schedule='step' needs "
                                 'milestones')
            for value in milestones:
                _check_number('milestones', value)
            if milestones != sorted(milestones):
                raise ValueError('DistillWeightHook: milestones must be '
                                 f'increasing, got {milestones}')
        if (schedule in ('linear', 'cosine') and stop is not None
                and stop <= begin):
            raise ValueError(
                f'DistillWeightHook: stop={stop} ends distillation before '
                f'the {schedule} schedule starts (begin={begin}), so it '
                f'would never apply; set stop after begin, or use '
                f"schedule='constant' with stop={stop}")
        self.schedule = schedule
        self.by_epoch = by_epoch
        self.weight = float(weight)
        self.start_weight = float(start_weight)
        self.min_weight = float(min_weight)
        self.begin = begin
        self.end = end
        self.milestones = milestones
        self.gamma = float(gamma)
        self.stop = stop
        # The multiplier of the previous iteration (None: no iteration yet
        # in this process), to log a change to or from 0 once.
        self._previous: Optional[float] = None

    def multiplier(self, progress: int) -> float:
        """The multiplier at ``progress`` (iterations or epochs)."""
        if self.stopped(progress):
            return 0.0
        if self.schedule == 'constant':
            return self.weight
        if self.schedule == 'step':
            passed = sum(progress >= m for m in self.milestones)
            return self.weight * self.gamma**passed
        if progress < self.begin:
            return (self.start_weight
                    if self.schedule == 'linear' else self.weight)
        fraction = min(1.0, (progress - self.begin) / (self.end - self.begin))
        if self.schedule == 'linear':
            return self.start_weight + fraction * (
                self.weight - self.start_weight)
        return self.min_weight + 0.5 * (self.weight - self.min_weight) * (
            1 + math.cos(math.pi * fraction))

    def stopped(self, progress: int) -> bool:
        """Whether ``progress`` is at or past ``stop``."""
        return self.stop is not None and progress >= self.stop

    def before_train(self, runner) -> None:
        """Fail before the first step without a distiller, or with
        ``by_epoch=True`` in a loop that does not count epochs."""
        self._distiller(runner)
        loop = runner.train_loop
        if self.by_epoch and not isinstance(loop, EpochBasedTrainLoop):
            try:
                per_epoch = (f'; one pass over the training data is '
                             f'{len(loop.dataloader)} iterations here')
            except TypeError:
                per_epoch = ''
            raise ValueError(
                'DistillWeightHook(by_epoch=True) needs an epoch-based '
                f'train loop, but this run uses {type(loop).__name__}, '
                'which counts iterations (with an InfiniteSampler its epoch '
                'never advances), so the schedule would never move; give '
                'begin / end / stop / milestones in iterations with '
                'by_epoch=False' + per_epoch)

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        distiller = self._distiller(runner)
        progress = runner.epoch if self.by_epoch else runner.iter
        value = self.multiplier(progress)
        if value == 0 and self._previous != 0:
            if self._previous is not None:
                self._restart_loss_windows(runner, distiller)
            self._log_zero(runner, progress)
        elif value != 0 and self._previous == 0:
            runner.logger.info(
                f'distillation weight {value:g} (iteration {runner.iter}, '
                f'epoch {runner.epoch}): the teacher runs')
        self._previous = value
        distiller.distill_weight = value
        distiller.distill_weight_scheduled = True

    def _log_zero(self, runner, progress: int) -> None:
        """Say why the teacher does not run from this iteration."""
        where = f'(iteration {runner.iter}, epoch {runner.epoch})'
        if self.stopped(progress):
            unit = 'epoch' if self.by_epoch else 'iteration'
            runner.logger.info(
                f'distillation stopped at {unit} {self.stop} (stop): the '
                f'teacher no longer runs {where}')
        else:
            runner.logger.info(
                f'distillation weight 0 ({self.schedule} schedule) {where}: '
                'the teacher does not run while the weight is 0')

    @staticmethod
    def _distiller(runner):
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        if not hasattr(model, 'distill_weight'):
            raise TypeError('DistillWeightHook needs an mmdist Distiller, '
                            f'got {type(model).__name__}')
        return model

    @staticmethod
    def _restart_loss_windows(runner, distiller) -> None:
        """Drop the smoothing windows of every logged training loss (the
        total, the student's and the distillation terms' with their parts)
        when the multiplier drops to 0: the log then shows 0 for the
        distillation terms at once rather than a mean of earlier values,
        and the total, smoothed over the same iterations as its parts,
        still equals their sum."""
        names = [term.name for term in distiller.terms]
        scalars = runner.message_hub.log_scalars
        for key in list(scalars):
            if not key.startswith('train/'):
                continue
            name = key.split('/', 1)[1]
            if 'loss' in name or any(name.startswith(f'{n}_') for n in names):
                scalars.pop(key)
