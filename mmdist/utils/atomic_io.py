"""Write files so that a reader sees the old file or the whole new one.

A checkpoint written in place by ``open(path, 'wb')`` is a truncated file
for as long as the write lasts, and stays one when the process is killed or
the disk fills up. Here the data goes to a temporary file in the same
directory, is flushed and fsynced, and only then renamed over ``path``
(``os.replace`` is atomic within a file system); the directory is fsynced
so the rename itself survives a power cut.
"""
import contextlib
import os
import os.path as osp
import re
import secrets
from typing import IO, Iterator, List

import torch

# Temporary files are hidden, carry the writer's pid and never end in .pth,
# so no checkpoint glob or resume scan can take one for a checkpoint.
_TEMP_NAME = re.compile(r'^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$')


def temp_path(path: str) -> str:
    """A fresh temporary path next to ``path``, named after it."""
    dirname, basename = osp.split(osp.abspath(path))
    token = secrets.token_hex(4)
    return osp.join(dirname, f'.{basename}.{os.getpid()}.{token}.tmp')


def fsync_dir(dirname: str) -> None:
    """Make the entries of ``dirname`` (a rename, a removal) durable."""
    fd = os.open(dirname, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. some network mounts) refuse this
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'wb') -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block ends.

    On a normal exit the file is flushed, fsynced and renamed over
    ``path``; when the block raises (including ``KeyboardInterrupt``) the
    temporary file is removed and ``path`` is left as it was.

    Args:
        path (str): The file to write. Missing parent directories are
            created.
        mode (str): ``'wb'`` or ``'w'``.

    Yields:
        IO: The temporary file.
    """
    if mode not in ('wb', 'w'):
        raise ValueError(f'atomic_open writes whole files, not mode={mode!r}')
    path = osp.abspath(path)
    dirname = osp.dirname(path)
    os.makedirs(dirname, exist_ok=True)
    tmp = temp_path(path)
    # os.open applies the umask like open() does (mkstemp would give 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(dirname)


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, 'wb') as f:
        f.write(data)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, 'w') as f:
        f.write(text)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file."""
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)


def temp_files(dirname: str) -> List[str]:
    """The temporary files :func:`atomic_open` left in ``dirname``.

    Files of writers that were killed (or of writers still running: the
    caller must own the directory, as a training run owns its work_dir).

    Args:
        dirname (str): Directory to look in.

    Returns:
        list[str]: Their paths, sorted.
    """
    if not osp.isdir(dirname):
        return []
    return [
        osp.join(dirname, name) for name in sorted(os.listdir(dirname))
        if _TEMP_NAME.match(name)
    ]
