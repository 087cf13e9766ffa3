"""Keep DataLoader workers alive through SIGTERM until the main process has
saved its checkpoint."""
import atexit
import functools
import multiprocessing
import os
import signal
from typing import Callable, Iterable, Optional, Sequence


def _guarded_worker_init(signals: Sequence[int], released,
                         init_fn: Optional[Callable[[int], None]],
                         worker_id: int) -> None:
    """``worker_init_fn`` that makes the signals harmless until released.

    Runs after torch has given the worker its own SIGTERM handler (which
    kills it). Once ``released`` is set, the signal kills the worker again,
    as multiprocessing's clean-up at exit expects.
    """

    def on_signal(signum, frame):
        if released.value:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in signals:
        signal.signal(signum, on_signal)
    if init_fn is not None:
        init_fn(worker_id)


class LoaderWorkerGuard:
    """Shield the workers of DataLoaders from signals until released.

    A scheduler signals every process of a job, DataLoader workers
    included, and torch's workers die on SIGTERM: the main process would
    then fail on a dead worker before it could save. Workers outlive the
    main process by design only until they notice it is gone, so ignoring
    the signal in them is safe.

    Args:
        signals (Sequence[int]): The signals to shield from.
    """

    def __init__(self, signals: Sequence[int]) -> None:
        self.signals = tuple(signals)
        # Shared with the workers (inherited, or pickled when spawned).
        self._released = multiprocessing.RawValue('b', 0)
        self._at_exit = False

    def protect(self, loaders: Iterable) -> None:
        """Wrap the ``worker_init_fn`` of ``loaders`` that use workers.

        Call before the loaders start their workers (before iterating).
        """
        for loader in loaders:
            init_fn = getattr(loader, 'worker_init_fn', None)
            if not getattr(loader, 'num_workers',
                           0) or (isinstance(init_fn, functools.partial)
                                  and init_fn.func is _guarded_worker_init):
                continue
            loader.worker_init_fn = functools.partial(_guarded_worker_init,
                                                      self.signals,
                                                      self._released, init_fn)
        if not self._at_exit:
            # However the process ends (an exception too), release before
            # multiprocessing terminates the workers at exit: atexit runs
            # last in, first out, and multiprocessing registered earlier.
            atexit.register(self.release)
            self._at_exit = True

    def release(self) -> None:
        """Let the signals end the workers again."""
        self._released.value = 1
