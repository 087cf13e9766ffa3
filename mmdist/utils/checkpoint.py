"""Load MMEngine checkpoints on torch >= 2.6 without arbitrary unpickling.

torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``, and MMEngine
0.10.7 calls it without the argument, so the checkpoints its own Runner writes
(numpy scalars in ``meta``, ``HistoryBuffer`` in ``message_hub``) no longer
load. Importing mmdist allows exactly the globals those checkpoints carry and
keeps everything else refused: a checkpoint that names any other global is
rejected with :class:`UnsafeCheckpointError`, which names the file and the
globals. A user who trusts such a file opts in for the process with torch's
own switch, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""
import os.path as osp
import pickle
import re
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.runner.checkpoint import (CheckpointLoader, load_from_http,
                                        load_from_local)

TRUST_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint names pickled globals outside the allowed set."""


def _restricted_getattr(obj, name: str):
    """``getattr`` for unpickling, limited to what MMEngine pickles with it.

    ``HistoryBuffer`` keeps its statistics methods in a dict, which pickle
    writes as ``getattr(HistoryBuffer, 'mean')``. A general ``getattr``
    would reach methods such as ``ndarray.tofile`` of allowed objects, so
    only the registered statistics methods of ``HistoryBuffer`` are given.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    # The defaults are registered when the first buffer is created, which a
    # fresh process may not have done yet.
    allowed = {'min', 'max', 'current', 'mean'}
    allowed.update(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'GLOBAL builtins.getattr refused for {obj!r}.{name}')


def openmmlab_checkpoint_globals() -> List[Union[Callable, Tuple[Callable,
                                                                 str]]]:
    """The globals MMEngine/OpenMMLab checkpoints carry besides tensors.

    Returns:
        list: Entries for :func:`torch.serialization.add_safe_globals`; the
        numpy ones are also listed under their numpy 1.x names
        (``numpy.core.*``) so checkpoints written with numpy 1 load too.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    from numpy._core.multiarray import _reconstruct, scalar

    entries: list = [
        HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar,
        (_reconstruct, 'numpy.core.multiarray._reconstruct'),
        (scalar, 'numpy.core.multiarray.scalar'),
        (_restricted_getattr, 'builtins.getattr'),
    ]
    # numpy >= 1.25 pickles dtypes through their classes (numpy.dtypes.*).
    for type_ in sorted(set(np.sctypeDict.values()), key=str):
        entries.append(type(np.dtype(type_)))
    return entries


def _unsafe_globals(filename: str, error: Exception) -> List[str]:
    """Names of the refused globals, from the file when torch can list them
    (zip checkpoints), else from torch's message."""
    if osp.isfile(filename):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(
                filename)
            allowed = {
                f'{g.__module__}.{g.__qualname__}' if callable(g) else g
                for g in torch.serialization.get_safe_globals()
                if not isinstance(g, tuple)
            }
            allowed |= {
                g[1]
                for g in torch.serialization.get_safe_globals()
                if isinstance(g, tuple)
            }
            names = [name for name in names if name not in allowed]
            if names:
                return names
        except Exception:  # not a zip checkpoint: fall back to the message
            pass
    return re.findall(r'GLOBAL ([\w.]+)', str(error)) or ['<unknown>']


def _explain_refusal(filename: str, error: Exception) -> UnsafeCheckpointError:
    names = ', '.join(_unsafe_globals(filename, error))
    return UnsafeCheckpointError(
        f'Refused to load checkpoint {filename}: it holds pickled globals '
        f'outside the types MMEngine checkpoints need ({names}). Loading it '
        f'could run arbitrary code. If you trust this file, set the '
        f'environment variable {TRUST_ENV}=1 to load it with full '
        f'unpickling.')


def _load_local(filename: str, map_location: Optional[str] = None) -> dict:
    """MMEngine's local loader with clear errors for refused or broken
    files."""
    filename = osp.expanduser(filename)
    try:
        return load_from_local(filename, map_location)
    except pickle.UnpicklingError as error:
        raise _explain_refusal(filename, error) from None
    except (RuntimeError, EOFError) as error:
        raise RuntimeError(
            f'Cannot read checkpoint {filename} ({error}); the file may be '
            f'truncated or not a torch checkpoint.') from error


def _load_http(filename: str,
               map_location: Optional[str] = None,
               model_dir: Optional[str] = None,
               **kwargs) -> dict:
    """MMEngine's http(s) loader with a clear error for refused files."""
    try:
        return load_from_http(filename, map_location, model_dir, **kwargs)
    except pickle.UnpicklingError as error:
        raise _explain_refusal(filename, error) from None


def install_safe_checkpoint_loading() -> None:
    """Allow the OpenMMLab checkpoint globals and route MMEngine's local and
    http(s) checkpoint loading through the explaining loaders.

    Idempotent; called when ``mmdist`` is imported.
    """
    torch.serialization.add_safe_globals(openmmlab_checkpoint_globals())
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local,
                                     force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=_load_http, force=True)
