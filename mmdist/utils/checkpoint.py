"""Load MMEngine checkpoints on torch >= 2.6 without arbitrary unpickling.

The rule (what is allowed, what is refused, how to opt out) is stated once,
in :func:`install_safe_checkpoint_loading`, which ``import mmdist`` calls.
"""
import os.path as osp
import pickle
import re
import zipfile
from typing import Callable, List, Optional, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .file_kind import describe_non_checkpoint

TRUST_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint names pickled globals outside the allowed set."""


class NotACheckpointError(RuntimeError):
    """A file given as a checkpoint is not one (text, HTML, numpy, empty,
    truncated): no setting would make it load."""


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


def openmmlab_checkpoint_globals(
) -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals MMEngine/OpenMMLab checkpoints carry besides tensors.

    Returns:
        list: Entries for :func:`torch.serialization.add_safe_globals`; the
        numpy ones are also listed under their numpy 1.x names
        (``numpy.core.*``) so checkpoints written with numpy 1 load too.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    from numpy._core.multiarray import _reconstruct, scalar

    entries: list = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        _reconstruct,
        scalar,
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
    return re.findall(r'GLOBAL ([\w.]+)', str(error))


def _explain_refusal(filename: str, error: Exception) -> Exception:
    """The error for a torch checkpoint that ``weights_only`` refused.

    A refusal that names globals is an unsafe checkpoint; one that does not
    (an unsupported pickle opcode) means the pickle data itself is damaged,
    which no opt-in would fix.
    """
    names = _unsafe_globals(filename, error)
    if not names:
        return RuntimeError(
            f'Cannot read checkpoint {filename}: its pickled data is damaged '
            f'({str(error).splitlines()[-1]}).')
    return UnsafeCheckpointError(
        f'Refused to load checkpoint {filename}: it holds pickled globals '
        f'outside the types MMEngine checkpoints need ({", ".join(names)}). '
        f'Loading it could run arbitrary code. If you trust this file, set '
        f'the environment variable {TRUST_ENV}=1 to load it with full '
        f'unpickling.')


def check_is_checkpoint(filename: str, source: Optional[str] = None) -> None:
    """Raise :class:`NotACheckpointError` when a local file cannot be a
    PyTorch checkpoint (see :func:`describe_non_checkpoint`).

    Args:
        filename (str): Path of an existing local file.
        source (str, optional): Where the file came from (a URL), named in
            the message instead of ``filename``.
    """
    kind = describe_non_checkpoint(filename)
    if kind is None:
        return
    if source is None:
        raise NotACheckpointError(
            f'{filename} is not a PyTorch checkpoint: it is {kind}. Check '
            'the path (teacher_ckpt, load_from, --resume or the checkpoint '
            'argument).')
    raise NotACheckpointError(
        f'{source} did not give a PyTorch checkpoint: the downloaded file '
        f'{filename} is {kind}. Delete it and check the URL.')


# What torch.load raises for a damaged file with a checkpoint's layout (under
# full unpickling a damaged pickle can fail in almost any way).
_READ_ERRORS = (RuntimeError, EOFError, ValueError, KeyError, IndexError,
                TypeError, AttributeError, zipfile.BadZipFile,
                pickle.UnpicklingError)


def _refused_by_weights_only(error: Exception) -> bool:
    """Whether torch's ``weights_only`` unpickler raised ``error``."""
    return isinstance(error,
                      pickle.UnpicklingError) and ('Weights only load failed'
                                                   in str(error))


def _raise_read_error(filename: str, error: Exception) -> None:
    """Raise the error that explains ``error`` from loading ``filename``."""
    if _refused_by_weights_only(error):
        # Without the chain: torch's own text advises weights_only=False.
        raise _explain_refusal(filename, error) from None
    raise RuntimeError(f'Cannot read checkpoint {filename} '
                       f'({type(error).__name__}: {error}).') from error


def load_local_checkpoint(filename: str,
                          map_location=None,
                          mmap: bool = False):
    """``torch.load`` a local checkpoint with errors that explain the file.

    Args:
        filename (str): Local path (``~`` is expanded).
        map_location: As for :func:`torch.load`.
        mmap (bool): Map the tensor data instead of reading it (zip
            checkpoints only); a cheap way to check a checkpoint is whole.

    Returns:
        The loaded object.

    Raises:
        FileNotFoundError: The file does not exist.
        NotACheckpointError: The file is not a PyTorch checkpoint.
        UnsafeCheckpointError: It holds globals outside the allowed set.
        RuntimeError: Naming the file, for any other damage.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    # Before unpickling anything: under full unpickling a text file is run as
    # a pickle program, and under weights_only its refusal would read as a
    # security problem.
    check_is_checkpoint(filename)
    try:
        return torch.load(filename, map_location=map_location, mmap=mmap)
    except _READ_ERRORS as error:
        _raise_read_error(filename, error)


# The loaders keep MMEngine's names: CheckpointLoader logs "Loads checkpoint
# by <name minus 'load_from_'> backend".
def load_from_local(filename: str, map_location=None):
    """MMEngine's local-path checkpoint loader, with the errors of
    :func:`load_local_checkpoint`."""
    return load_local_checkpoint(filename, map_location)


def _http_cache_path(url: str, model_dir: Optional[str]) -> str:
    """Where ``torch.hub`` keeps the file downloaded from ``url``."""
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urlparse(url).path))


def load_from_http(filename: str,
                   map_location: Optional[str] = None,
                   model_dir: Optional[str] = None,
                   **kwargs) -> dict:
    """MMEngine's http(s) loader with clear errors for downloads that are
    not checkpoints or are refused."""
    try:
        return mmengine_checkpoint.load_from_http(filename, map_location,
                                                  model_dir, **kwargs)
    except _READ_ERRORS as error:
        # torch.hub keeps a bad download (say an HTML login page) in its
        # cache and loads it again on every run: say what it is and where.
        cached = _http_cache_path(filename, model_dir)
        if osp.isfile(cached):
            check_is_checkpoint(cached, source=filename)
        _raise_read_error(filename, error)


def install_safe_checkpoint_loading() -> None:
    """Make the checkpoints MMEngine writes load on torch >= 2.6, and nothing
    that could run code on load.

    ``import mmdist`` calls this once (calling it again changes nothing).
    torch >= 2.6 defaults ``torch.load`` to ``weights_only=True`` and
    MMEngine 0.10.7 calls it without the argument, so checkpoints written
    by MMEngine's own Runner (numpy scalars in ``meta``, ``HistoryBuffer``
    in ``message_hub``) would no longer load. The rule:

    - **Allowed**: what torch's weights-only unpickler allows (tensors,
      containers, numbers, strings) plus exactly the globals those
      checkpoints carry (:func:`openmmlab_checkpoint_globals`: numpy
      arrays, dtypes and scalars under their numpy 1 and 2 names,
      ``HistoryBuffer`` and its statistics methods), registered with
      ``torch.serialization.add_safe_globals``.
    - **Refused**: a checkpoint that names any other global raises
      :class:`UnsafeCheckpointError` naming the file and the globals; none
      of them is run. A file that is not a PyTorch checkpoint at all (a
      failed download's HTML page, JSON, a numpy array, an empty or
      truncated file) raises :class:`NotACheckpointError` naming the file
      and what it looks like, before anything is unpickled and whatever
      the opt-out below.
    - **Opt out**, for a file you trust: set torch's own switch
      ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment; the process
      then unpickles checkpoints fully.

    The rule applies wherever MMEngine loads a checkpoint from a local path
    or an http(s) URL (``load_from``, ``--resume``, ``teacher_ckpt``,
    :func:`mmengine.runner.load_checkpoint`): this replaces those two
    ``CheckpointLoader`` schemes with :func:`load_from_local` and
    :func:`load_from_http`. Other schemes keep MMEngine's loaders.
    """
    torch.serialization.add_safe_globals(openmmlab_checkpoint_globals())
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http, force=True)
