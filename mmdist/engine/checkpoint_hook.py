"""A CheckpointHook whose checkpoints survive a kill at any moment."""
import contextlib
import os
import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.runner import EpochBasedTrainLoop

from mmdist.registry import HOOKS
from mmdist.utils.atomic_io import atomic_write_text, temp_files
from .divergence import DivergenceGuardHook, nonfinite_weights, stop_diverged
from .file_backend import atomic_backend_args
from .resume import POINTER, find_resume_checkpoint, template_regex

# Name of a checkpoint written in the middle of an epoch (on SIGTERM) by an
# epoch-based run: by the iterations it holds, as iteration-based runs name
# theirs. It is removed once a later epoch checkpoint is complete.
PARTIAL_EPOCH_TMPL = 'iter_{}.pth'


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """:class:`mmengine.hooks.CheckpointHook` that never leaves a partial
    checkpoint behind, and resumes from the newest one that loads.

    Takes the arguments of ``CheckpointHook`` and saves the same files, but:

    - every checkpoint (``best_*`` included) and the ``last_checkpoint``
      pointer is written to a temporary file in the same directory,
      fsynced, renamed into place, and the directory fsynced (local
      ``out_dir`` only; remote storage keeps its own backend);
    - checkpoints beyond ``max_keep_ckpts`` are removed only after the new
      checkpoint is complete and ``last_checkpoint`` names it (MMEngine
      removes them before writing);
    - a write that fails (e.g. a full disk) stops training with
      :class:`CheckpointWriteError` naming the file; the previous checkpoint
      and pointer are unchanged;
    - weights holding inf or NaN (a diverged run) are never written and
      nothing is rotated: training stops with
      :class:`~mmdist.engine.TrainingDiverged` naming the weights and the
      checkpoint to restart from (written before the loss began to grow);
    - with ``resume=True`` and no ``load_from``, the run resumes from the
      newest checkpoint that loads (``best_*`` files are no candidates),
      also when ``last_checkpoint`` names a missing, unreadable or older
      file, and logs each file it passes over and why;
    - temporary files left by a killed writer are removed at the start;
    - :meth:`save_now` saves the state reached so far, for
      :class:`mmdist.engine.PreemptionHook`.

    Args:
        *args, **kwargs: Those of :class:`mmengine.hooks.CheckpointHook`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Iterations held by the newest checkpoint this process wrote.
        self._saved_iters: Optional[int] = None

    # ------------------------------------------------------------ set-up
    def before_run(self, runner) -> None:
        """Choose the checkpoint of an automatic resume.

        Runs before ``Runner.load_or_resume``, which then resumes from the
        chosen file as if it had been given with ``--resume PATH``.
        """
        # The Runner keeps these private; there is no public way to tell an
        # automatic resume from an explicit one.
        if not (runner._resume and runner._load_from is None):
            return
        out_dir = self._final_out_dir(runner)
        if '://' in out_dir:
            return  # remote checkpoints: MMEngine's own lookup
        chosen = find_resume_checkpoint(
            runner.work_dir, [out_dir],
            self._templates(runner),
            log=runner.logger.warning)
        if chosen is not None:
            runner._load_from = chosen

    def before_train(self, runner) -> None:
        """Set up the atomic writer and clear leftover temporary files."""
        if self.file_client_args is None:
            self.backend_args = atomic_backend_args(
                str(self.out_dir or runner.work_dir), self.backend_args)
        super().before_train(runner)
        if is_main_process():
            for dirname in dict.fromkeys([self.out_dir, runner.work_dir]):
                for path in temp_files(dirname):
                    runner.logger.warning(
                        f'Removing {path}, the unfinished write of a '
                        'process that was killed')
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)

    def _final_out_dir(self, runner) -> str:
        """``out_dir`` as ``CheckpointHook.before_train`` will resolve it."""
        if self.out_dir is None or self.out_dir == runner.work_dir:
            return runner.work_dir
        return osp.join(
            str(self.out_dir), osp.basename(runner.work_dir.rstrip(osp.sep)))

    def _templates(self, runner) -> list:
        """``(filename_tmpl, iterations per number)`` of this run's
        checkpoints."""
        if not self.by_epoch:
            return [(self.filename_tmpl, 1)]
        return [(self.filename_tmpl, len(runner.train_dataloader)),
                (PARTIAL_EPOCH_TMPL, 1)]

    # ------------------------------------------------------------ saving
    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """Save ``filename_tmpl.format(step)``, then drop expired ones.

        The order is MMEngine's with the removal moved last: the ids kept
        are updated first so that the checkpoint records them.
        """
        self._refuse_nonfinite(runner, self.filename_tmpl.format(step),
                               meta['iter'])
        expired = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                expired = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        self._write(runner, self.filename_tmpl.format(step), meta)
        if not is_main_process():
            return
        if expired is not None:
            self._remove_checkpoint(self.filename_tmpl.format(expired))
        if self.by_epoch and self.filename_tmpl != PARTIAL_EPOCH_TMPL:
            self._remove_partial_epoch_checkpoints(meta['iter'])

    def _refuse_nonfinite(self, runner, filename: str, iters: int) -> None:
        """Stop before writing (or rotating) a checkpoint of non-finite
        weights.

        Args:
            runner (Runner): The runner.
            filename (str): The checkpoint that would be written.
            iters (int): Training iterations done.

        Raises:
            TrainingDiverged: Naming the weights and the checkpoint to
                restart from (see :func:`~mmdist.engine.divergence.
                checkpoint_advice`).
        """
        weights = nonfinite_weights(runner.model)
        if not weights:
            return
        guard = next((hook for hook in runner.hooks
                      if isinstance(hook, DivergenceGuardHook)), None)
        # The weights after `iters` iterations would give iteration
        # iters + 1 a non-finite loss.
        onset = guard.onset(iters + 1) if guard is not None else None
        stop_diverged(
            runner,
            f'Training diverged: after {iters} training iterations the '
            f'weights are not finite ({", ".join(weights)}); {filename} is '
            'not written and no checkpoint is removed.', onset,
            guard.losses if guard is not None else {})

    def _write(self, runner, filename: str, meta: dict) -> str:
        """Write one checkpoint, then ``last_checkpoint`` naming it.

        Returns:
            str: The checkpoint's path.
        """
        path = self.file_backend.join_path(self.out_dir, filename)
        previous = self.last_ckpt
        self.last_ckpt = path
        runner.message_hub.update_info('last_ckpt', path)
        pointer = osp.join(runner.work_dir, POINTER)
        try:
            runner.save_checkpoint(
                self.out_dir,
                filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
            if is_main_process():
                atomic_write_text(text=path, path=pointer)
        except OSError as error:
            self.last_ckpt = previous
            runner.message_hub.update_info('last_ckpt', previous)
            kept = (f'the previous checkpoint {previous} and {pointer} are '
                    'unchanged' if previous else 'no earlier checkpoint of '
                    'this run was touched')
            raise CheckpointWriteError(
                error.errno, f'Could not write checkpoint {path} '
                f'({error.strerror or error}); training stops. {kept}.'
            ) from error
        self._saved_iters = meta['iter']
        return path

    def _remove_checkpoint(self, filename: str) -> None:
        path = self.file_backend.join_path(self.out_dir, filename)
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            # checkpoints saved by deepspeed are directories
            self.file_backend.rmtree(path)

    def _remove_partial_epoch_checkpoints(self, iters: int) -> None:
        """Drop mid-epoch checkpoints that a complete epoch checkpoint
        holding ``iters`` iterations has superseded."""
        if '://' in str(self.out_dir) or not osp.isdir(self.out_dir):
            return
        pattern = template_regex(PARTIAL_EPOCH_TMPL)
        for name in sorted(os.listdir(self.out_dir)):
            match = pattern.match(name)
            if match and int(match.group(1)) < iters:
                self._remove_checkpoint(name)

    def save_now(self, runner, in_train_iter: bool) -> str:
        """Save the training state reached so far, to stop early.

        Writes nothing when the newest checkpoint already holds this state.

        Args:
            runner (Runner): The runner.
            in_train_iter (bool): Called from ``after_train_iter`` (the
                iteration is done but not yet counted); else from
                validation, which runs once the iteration or epoch is
                counted.

        Returns:
            str: The checkpoint that holds the state.
        """
        iters = runner.iter + 1 if in_train_iter else runner.iter
        if self._saved_iters == iters and self.last_ckpt is not None:
            return self.last_ckpt
        by_epoch_loop = isinstance(runner.train_loop, EpochBasedTrainLoop)
        if not by_epoch_loop or not self.by_epoch:
            # Iteration-based checkpoints: MMEngine's own names and meta.
            self._save_checkpoint_with_step(
                runner, iters, dict(epoch=runner.epoch, iter=iters))
        elif not in_train_iter:
            # Validation after an epoch: the epoch checkpoint it skipped.
            self._save_checkpoint_with_step(
                runner, runner.epoch, dict(epoch=runner.epoch, iter=iters))
        else:
            # Mid-epoch: epoch = epochs completed, iter = iterations done;
            # ResumableEpochBasedTrainLoop resumes inside the epoch.
            self._refuse_nonfinite(runner, PARTIAL_EPOCH_TMPL.format(iters),
                                   iters)
            self._write(runner, PARTIAL_EPOCH_TMPL.format(iters),
                        dict(epoch=runner.epoch, iter=iters))
        return self.last_ckpt
