"""Pick the checkpoint an automatic resume starts from.

MMEngine's ``resume=True`` reads ``work_dir/last_checkpoint`` and fails
when the file it names is missing or unreadable, although an older
checkpoint next to it would do. Here the candidates are the file named by
``last_checkpoint`` and every checkpoint whose name fits the run's
templates (``best_*`` files never do), newest first; the first that loads
is taken, and every one passed over is reported with the reason.
"""
import os
import os.path as osp
import re
from typing import Callable, Iterable, List, Optional, Tuple

from mmdist.utils.checkpoint import load_local_checkpoint

POINTER = 'last_checkpoint'


def template_regex(template: str) -> 're.Pattern':
    """``'epoch_{}.pth'`` -> a regex with the number as group 1."""
    return re.compile('^' + re.escape(template).replace(r'\{\}', r'(\d+)') +
                      '$')


def checkpoint_candidates(
        dirs: Iterable[str],
        templates: Iterable[Tuple[str, int]]) -> List[Tuple[int, str]]:
    """Checkpoints in ``dirs`` whose names fit ``templates``.

    Args:
        dirs (Iterable[str]): Directories to look in.
        templates (Iterable[tuple[str, int]]): ``(filename_tmpl, scale)``:
            a file named ``filename_tmpl.format(n)`` holds ``n * scale``
            training iterations (an epoch template's scale is the number of
            iterations per epoch).

    Returns:
        list[tuple[int, str]]: ``(iterations, path)``, newest first.
    """
    patterns = [(template_regex(t), scale) for t, scale in templates]
    found = {}
    for dirname in dict.fromkeys(dirs):  # unique, in order
        if not osp.isdir(dirname):
            continue
        for name in os.listdir(dirname):
            for pattern, scale in patterns:
                match = pattern.match(name)
                if match:
                    path = osp.join(dirname, name)
                    found[path] = int(match.group(1)) * scale
    return sorted(((step, path) for path, step in found.items()), reverse=True)


def probe_checkpoint(path: str) -> Optional[str]:
    """Why a training run cannot resume from ``path``, or None if it can.

    Loads the checkpoint with its tensor data memory-mapped (zip
    checkpoints), which checks the archive and the pickled structure
    without reading the weights.

    Args:
        path (str): Local path.

    Returns:
        str, optional: The reason, or ``None``.
    """
    if not osp.isfile(path):
        return 'the file does not exist'
    with open(path, 'rb') as f:
        is_zip = f.read(4) == b'PK\x03\x04'
    try:
        ckpt = load_local_checkpoint(path, map_location='cpu', mmap=is_zip)
    except Exception as error:  # any failure means: not this one
        return f'{type(error).__name__}: {error}'
    if not isinstance(ckpt, dict) or not {'meta', 'state_dict'} <= set(ckpt):
        return ('it holds no meta and state_dict: not a training checkpoint '
                '(e.g. an exported model)')
    meta = ckpt['meta']
    if not isinstance(meta, dict) or not {'epoch', 'iter'} <= set(meta):
        return 'its meta has no epoch and iter to resume from'
    return None


def find_resume_checkpoint(
        work_dir: str,
        dirs: Iterable[str],
        templates: Iterable[Tuple[str, int]],
        log: Callable[[str], None] = print) -> Optional[str]:
    """The newest checkpoint to resume from automatically.

    Args:
        work_dir (str): Directory holding ``last_checkpoint``.
        dirs (Iterable[str]): Directories holding checkpoints.
        templates (Iterable[tuple[str, int]]): As for
            :func:`checkpoint_candidates`.
        log (Callable[[str], None]): Where to report skipped files.

    Returns:
        str, optional: The checkpoint, or ``None`` when there is none at
        all (a fresh start).

    Raises:
        RuntimeError: When there are checkpoints but none loads; listing
            each with its reason (starting over silently would lose them).
    """
    pointer = osp.join(work_dir, POINTER)
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    dirs = list(dirs)
    if named is not None:
        dirs.append(osp.dirname(named) or work_dir)
    candidates = checkpoint_candidates(dirs, templates)
    paths = [path for _, path in candidates]
    if named is not None and not any(
            osp.abspath(named) == osp.abspath(p) for p in paths):
        # A name outside the templates: MMEngine would take it, so try it
        # first.
        paths.insert(0, named)
    if not paths:
        return None
    skipped = []
    for path in paths:
        reason = probe_checkpoint(path)
        if reason is None:
            break
        skipped.append((path, reason))
        log(f'Resume: skipping {path}: {reason}')
    else:
        listing = '\n'.join(f'  {p}: {r}' for p, r in skipped)
        raise RuntimeError(
            f'--resume found checkpoints in {", ".join(dict.fromkeys(dirs))} '
            f'but none can be loaded:\n{listing}\nRemove them to start over, '
            'or pass --resume PATH.')
    if named is None:
        log(f'Resume: no {POINTER} in {work_dir}; resuming from {path}, the '
            'newest checkpoint that loads')
    elif osp.abspath(named) != osp.abspath(path):
        log(f'Resume: {pointer} names {named}; resuming from {path}, the '
            'newest checkpoint that loads')
    return path
