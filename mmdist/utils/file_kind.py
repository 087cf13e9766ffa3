"""Tell from its first bytes whether a file can be a PyTorch checkpoint.

``torch.load`` reads exactly three layouts: the zip archive ``torch.save``
writes since torch 1.6 (with a ``data.pkl`` record), the legacy format (a
pickle that starts with torch's magic number) and the pre-0.4 tar format.
Anything else fails inside the unpickler with errors that do not name the
file (``IndexError: pop from empty list``, ``KeyError: 101``) or, under
``weights_only=True``, with a refusal that reads like a security problem.
Recognising the other layouts up front lets the loader say what the file
is instead.
"""
import json
import os
import zipfile
from typing import Optional

# torch.serialization.MAGIC_NUMBER as a pickled long: protocol >= 2 writes
# LONG1 (0x8a), its length (10) and the little-endian bytes; protocols 0 and 1
# write the decimal digits.
_TORCH_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_MAGIC_P2 = b'\x8a\x0a' + _TORCH_MAGIC.to_bytes(10, 'little')
_LEGACY_MAGIC_P0 = b'L%dL\n' % _TORCH_MAGIC

_HEAD_BYTES = 4096

# (prefix, description) of binary formats people mistake for checkpoints.
_BINARY_KINDS = (
    (b'\x93NUMPY', 'a numpy .npy array (np.save), not a PyTorch checkpoint'),
    (b'\x1f\x8b', 'gzip-compressed data; decompress it first'),
    (b'\x89HDF\r\n\x1a\n', 'an HDF5 file (e.g. Keras .h5)'),
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'\x7fELF', 'an executable (ELF)'),
    (b'PK\x05\x06', 'an empty zip archive'),
)


def _is_legacy_torch(head: bytes) -> bool:
    """A pickle opening with torch's magic number (``torch.save`` with
    ``_use_new_zipfile_serialization=False``)."""
    if head.startswith(_LEGACY_MAGIC_P0):
        return True
    # Protocols 4 and 5 put a 9-byte FRAME opcode before the first object.
    return head[:2] in (b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05') \
        and _LEGACY_MAGIC_P2 in head[2:23]


def _describe_zip(filename: str, size: int) -> Optional[str]:
    """None for a zip ``torch.save`` wrote, else what the archive is."""
    try:
        with zipfile.ZipFile(filename) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        # The central directory, a zip's index, sits at the very end: a file
        # cut short (an interrupted save, copy or download) loses it first.
        return (f'a truncated or damaged zip archive ({size} bytes, no '
                'readable index at its end), e.g. an interrupted save, copy '
                'or download')
    if any(name == 'data.pkl' or name.endswith('/data.pkl') for name in names):
        return None
    if names and all(name.endswith('.npy') for name in names):
        return 'a numpy .npz archive (np.savez), not a PyTorch checkpoint'
    shown = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
    return f'a zip archive without the data.pkl torch.save writes ({shown})'


def _describe_safetensors(head: bytes, size: int) -> Optional[str]:
    """A safetensors file: an 8-byte header length, then a JSON header."""
    if len(head) < 10 or head[8:10] != b'{"':
        return None
    header_len = int.from_bytes(head[:8], 'little')
    if 8 + header_len <= size:
        return ('a safetensors file; load it with '
                'safetensors.torch.load_file and save the state dict with '
                'torch.save')
    return None


def _describe_text(head: bytes, size: int) -> Optional[str]:
    """What a text file is, or None when ``head`` is not text."""
    if b'\x00' in head:
        return None
    try:
        # A multi-byte character may be cut at the end of the head.
        text = head.decode(
            'utf-8', errors='strict' if size <= len(head) else 'ignore')
    except UnicodeDecodeError:
        return None
    if not text or sum(c.isprintable() or c.isspace()
                       for c in text) < 0.95 * len(text):
        return None
    stripped = text.lstrip('\ufeff \t\r\n')
    first_line = stripped.split('\n', 1)[0].strip()
    quoted = repr(first_line[:60] + ('...' if len(first_line) > 60 else ''))
    lower = stripped[:512].lower()
    if lower.startswith(('<!doctype html', '<html')) or '<html' in lower:
        return (f'an HTML page (starts with {quoted}), e.g. a login or error '
                'page saved by a failed download')
    if lower.startswith('<?xml') or lower.startswith('<error'):
        return (f'an XML document (starts with {quoted}), e.g. a storage '
                'service\'s error reply saved by a failed download')
    if stripped.startswith('version https://git-lfs'):
        return ('a Git LFS pointer, not the file itself; run '
                '`git lfs pull` to fetch it')
    if stripped.startswith(('{', '[')):
        if size <= len(head):
            try:
                json.loads(stripped)
            except ValueError:
                return f'a text file (starts with {quoted})'
        return 'a JSON document'
    return f'a text file (starts with {quoted})'


def describe_non_checkpoint(filename: str) -> Optional[str]:
    """Say what a file is when it cannot be a PyTorch checkpoint.

    Only the layouts ``torch.load`` reads pass: a zip archive with a
    ``data.pkl`` record, a legacy pickle starting with torch's magic number,
    and a tar archive. Everything else is described.

    Args:
        filename (str): Path of an existing local file.

    Returns:
        str, optional: ``None`` when the file may be a checkpoint, else a
        phrase such as ``'an HTML page (starts with ...)'``.
    """
    size = os.path.getsize(filename)
    if size == 0:
        return 'an empty file (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(_HEAD_BYTES)
    if head.startswith(b'PK\x03\x04'):
        return _describe_zip(filename, size)
    if _is_legacy_torch(head):
        return None
    if head[257:262] == b'ustar':  # torch < 0.4 saved tar archives
        return None
    for prefix, kind in _BINARY_KINDS:
        if head.startswith(prefix):
            return kind
    if head[:1] == b'\x80':
        return ('a Python pickle that torch.save did not write (no torch '
                'magic number), e.g. a Detectron2 or pickle.dump file')
    described = _describe_safetensors(head, size) or _describe_text(head, size)
    if described is not None:
        return described
    return f'binary data of an unknown format (starts with {head[:16]!r})'
