"""A local file backend for MMEngine whose writes are atomic."""
from pathlib import Path
from typing import Optional, Union

from mmengine.fileio import LocalBackend, get_file_backend, register_backend

from mmdist.utils.atomic_io import atomic_write_bytes, atomic_write_text

ATOMIC_BACKEND = 'mmdist_atomic_local'


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """:class:`LocalBackend` whose ``put`` never leaves a partial file.

    MMEngine's ``save_checkpoint`` serialises the checkpoint in memory and
    hands the bytes to ``put``; writing them through
    :func:`mmdist.utils.atomic_io.atomic_write_bytes` makes every checkpoint
    appear whole or not at all.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write_bytes(obj, str(filepath))

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        if encoding.lower().replace('-', '') != 'utf8':
            raise ValueError(f'{type(self).__name__} writes utf-8 only')
        atomic_write_text(obj, str(filepath))


def atomic_backend_args(uri: str,
                        backend_args: Optional[dict]) -> Optional[dict]:
    """``backend_args`` that write ``uri`` atomically when it is local.

    Args:
        uri (str): The directory written to.
        backend_args (dict, optional): The arguments a hook was given.

    Returns:
        dict, optional: ``{'backend': ATOMIC_BACKEND}`` when ``uri`` would
        be written by MMEngine's plain :class:`LocalBackend`; otherwise
        ``backend_args`` unchanged (remote storage keeps its own backend).
    """
    if type(get_file_backend(uri, backend_args=backend_args)) is LocalBackend:
        return dict(backend=ATOMIC_BACKEND)
    return backend_args
