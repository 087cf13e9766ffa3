"""An epoch-based training loop that can resume in the middle of an epoch."""
import itertools
from typing import Iterable, Iterator, List

from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from mmdist.registry import LOOPS

# Runtime info recording the loader length, so a resumed run can tell
# whether the iteration count still maps onto its epochs.
EPOCH_LENGTH_KEY = 'train_epoch_length'

# DataLoader arguments a loader over the rest of an epoch copies.
_LOADER_ARGS = ('num_workers', 'collate_fn', 'pin_memory', 'timeout',
                'worker_init_fn', 'multiprocessing_context', 'generator',
                'prefetch_factor', 'pin_memory_device', 'in_order')


class _SkipBatches:
    """A batch sampler without the first ``skip`` batches of another."""

    def __init__(self, batch_sampler: Iterable[List[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[List[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def rest_of_epoch(loader: DataLoader, skip: int) -> Iterable:
    """The batches of one pass over ``loader`` after the first ``skip``.

    The batch sampler decides the order, so a loader over the same dataset
    with the first ``skip`` batches of its indices left out yields exactly
    the remaining batches, without loading the skipped samples. Loaders of
    other types (or without a batch sampler) are iterated and the first
    batches dropped.

    Args:
        loader (DataLoader): The epoch's loader, its sampler's epoch set.
        skip (int): Batches already trained.

    Returns:
        Iterable: The remaining batches.
    """
    if type(loader) is not DataLoader or loader.batch_sampler is None:
        return itertools.islice(loader, skip, None)
    kwargs = {
        name: getattr(loader, name)
        for name in _LOADER_ARGS if hasattr(loader, name)
    }
    if not kwargs.get('num_workers'):
        kwargs.pop('prefetch_factor', None)  # refused without workers
    return DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        **kwargs)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """:class:`EpochBasedTrainLoop` that resumes inside an epoch.

    MMEngine's epoch loop restarts an interrupted epoch from its first
    batch, so a run resumed from a mid-epoch checkpoint (one written on
    SIGTERM by :class:`mmdist.engine.PreemptionHook`, or by an
    iteration-interval ``CheckpointHook``) trains those batches twice and
    counts more iterations than it should. This loop skips the batches the
    checkpoint already holds: the sampler's order of an epoch is fixed by
    the seed and the epoch number (``DefaultSampler.set_epoch``), so the
    batches that follow are exactly those the interrupted run had not
    trained yet. Skipped batches are not loaded.

    The position is ``iter - epoch * len(dataloader)`` of the checkpoint's
    meta; it is trusted only when the checkpoint records the same loader
    length (``train_epoch_length`` in the message hub, written by this
    loop), since a different world size or batch size changes it.

    Args: as for :class:`EpochBasedTrainLoop`.
    """

    def run(self):
        """Launch training."""
        self._resume_skip = self._batches_done_in_epoch()
        # Saved with every checkpoint (resumed runtime info).
        self.runner.message_hub.update_info(EPOCH_LENGTH_KEY,
                                            len(self.dataloader))
        return super().run()

    def _batches_done_in_epoch(self) -> int:
        """Batches of the current epoch the resumed checkpoint holds."""
        length = len(self.dataloader)
        done = self._iter - self._epoch * length
        if done == 0:
            return 0
        saved_length = self.runner.message_hub.get_info(EPOCH_LENGTH_KEY)
        if saved_length == length and 0 < done <= length:
            return done
        self.runner.logger.warning(
            f'The checkpoint holds {self._iter} iterations and '
            f'{self._epoch} epochs, which does not map onto epochs of '
            f'{length} batches (it recorded '
            f'{saved_length or "no"} batches per epoch): epoch '
            f'{self._epoch + 1} restarts from its first batch.')
        return 0

    def run_epoch(self) -> None:
        """Iterate one epoch, or what is left of it after a resume."""
        skip, self._resume_skip = getattr(self, '_resume_skip', 0), 0
        if not skip:
            return super().run_epoch()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        self.runner.logger.info(
            f'Resuming inside epoch {self._epoch + 1}: skipping its first '
            f'{skip} of {len(self.dataloader)} batches, trained before the '
            'interruption.')
        # The sampler's epoch is set by DistSamplerSeedHook in
        # before_train_epoch, so the order below is the interrupted one.
        for idx, data_batch in enumerate(
                rest_of_epoch(self.dataloader, skip), start=skip):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
