"""Stop training cleanly on SIGTERM: checkpoint, then exit with a known code.

Clusters announce preemption and time limits with SIGTERM and follow with
SIGKILL after a grace period. By default Python dies on SIGTERM at once,
losing everything since the last periodic checkpoint.
"""
import signal
import threading
from typing import Optional, Sequence, Union

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

from mmdist.registry import HOOKS
from .checkpoint_hook import SafeCheckpointHook
from .loader_workers import LoaderWorkerGuard
from .loops import ResumableEpochBasedTrainLoop

#: Exit code after a handled SIGTERM (checkpoint saved): 128 + SIGTERM, the
#: code shells and schedulers already read as "stopped by SIGTERM", so
#: requeue logic treats a clean stop and a plain kill alike.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class TrainingPreempted(SystemExit):
    """Raised once the checkpoint is written; leaves the process with
    :data:`PREEMPTED_EXIT_CODE` (a ``SystemExit``, so ``except Exception``
    blocks on the way out do not swallow it).

    Args:
        message (str): What happened and which checkpoint holds the state.
    """

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On SIGTERM, save a checkpoint at the end of the current iteration and
    exit with :data:`PREEMPTED_EXIT_CODE`.

    - The signal handler only records the signal; the iteration in flight
      completes, with all its ``after_train_iter`` hooks (this hook runs
      last), then the state is saved through the run's
      :class:`SafeCheckpointHook` (atomically, pointer updated).
    - Under DDP the ranks all-reduce (MAX) a stop flag after every
      iteration, so they stop at the same iteration even when only some of
      them got the signal; all ranks wait until the checkpoint is written.
    - During validation (inside training) the flag is checked after every
      validation batch: the validation is abandoned (its metrics are not
      computed), the state it validated is saved if no checkpoint holds it
      yet, and the run exits. The resumed run goes on with training.
    - In an epoch-based run the checkpoint may fall inside an epoch; with
      :class:`ResumableEpochBasedTrainLoop` the resumed run trains only the
      batches of that epoch that were not trained yet.

    The DataLoader workers of training and validation ignore the signals
    until the main process has saved (through their ``worker_init_fn``), so
    a SIGTERM sent to every process of the job, as Slurm does, does not
    kill them first.

    Args:
        signals (Sequence[str | int]): Signals that ask for the stop.
            Defaults to ``('SIGTERM',)``.
    """

    priority = 'LOWEST'

    def __init__(self, signals: Sequence[Union[str, int]] = ('SIGTERM', )):
        self.signals = [
            signal.Signals[s] if isinstance(s, str) else signal.Signals(s)
            for s in signals
        ]
        self._received: Optional[signal.Signals] = None
        self._previous: dict = {}
        self._training = False
        self._checkpoint_hook: Optional[SafeCheckpointHook] = None
        self._workers = LoaderWorkerGuard(self.signals)

    # ------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        hooks = [h for h in runner.hooks if isinstance(h, SafeCheckpointHook)]
        if not hooks:
            raise RuntimeError(
                'PreemptionHook saves through the checkpoint hook: set '
                "default_hooks.checkpoint.type='mmdist.SafeCheckpointHook'")
        self._checkpoint_hook = hooks[0]
        loop = runner.train_loop
        if isinstance(loop, EpochBasedTrainLoop) and not isinstance(
                loop, ResumableEpochBasedTrainLoop):
            runner.logger.warning(
                'PreemptionHook with EpochBasedTrainLoop: a run stopped '
                'inside an epoch retrains that epoch\'s first batches when '
                "resumed; use train_cfg type='mmdist."
                "ResumableEpochBasedTrainLoop'")
        loaders = [loop.dataloader]
        if runner.val_loop is not None:
            loaders.append(runner.val_loop.dataloader)
        self._workers.protect(loaders)
        self._install()
        self._training = True

    def after_train(self, runner) -> None:
        self._training = False
        self._workers.release()
        self._restore()

    def after_run(self, runner) -> None:
        self._restore()

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        for signum in self.signals:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._record)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame) -> None:
        # Only note it: the training step in flight must finish first. A
        # second signal changes nothing (the checkpoint is on its way).
        if self._received is None:
            self._received = signal.Signals(signum)

    # ------------------------------------------------------------ checks
    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if self._stop_requested():
            self._stop(runner, in_train_iter=True)

    def after_val_iter(self,
                       runner,
                       batch_idx: int,
                       data_batch=None,
                       outputs=None) -> None:
        if self._training and self._stop_requested():
            self._stop(runner, in_train_iter=False)

    def _stop_requested(self) -> bool:
        """Whether any rank got a signal (the same answer on every rank)."""
        flag = torch.tensor([0 if self._received is None else 1])
        if dist.get_world_size() > 1:
            dist.all_reduce(flag, op='max')
        return bool(flag.item())

    def _stop(self, runner, in_train_iter: bool) -> None:
        path = self._checkpoint_hook.save_now(runner, in_train_iter)
        # Ranks other than 0 must not leave before rank 0 has written the
        # checkpoint: a launcher would kill it on their exit.
        dist.barrier()
        iters = runner.iter + 1 if in_train_iter else runner.iter
        name = ('a signal on another rank'
                if self._received is None else self._received.name)
        where = ('after training iteration'
                 if in_train_iter else 'during validation (abandoned) after '
                 'training iteration')
        message = (f'{name} received: stopped {where} {iters}; the state is '
                   f'in {path}. Continue with --resume. Exiting with code '
                   f'{PREEMPTED_EXIT_CODE}.')
        runner.logger.warning(message)
        # A launcher that saw another rank exit first sends SIGTERM again
        # while this process shuts down; Python's own handler is gone by
        # then (interpreter finalisation restores SIG_DFL for handlers, not
        # for SIG_IGN), so ignore it from here on: the state is saved.
        self._ignore_signals()
        self._workers.release()
        raise TrainingPreempted(message)

    def _ignore_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                signal.signal(signum, signal.SIG_IGN)
            self._previous.clear()
