"""Write the student of a distillation checkpoint as a plain checkpoint.

The result loads into the stock MMDet/MMSeg/MMPretrain model built from the
student's own config (``load_checkpoint(model, out, strict=True)``).

Usage: python tools/model_converters/export_student.py CHECKPOINT OUT

OUT may not be CHECKPOINT itself (also through a link), and is written
atomically: an interrupted export leaves no partial file.
"""
import argparse
import os.path as osp

from mmengine.runner.checkpoint import _load_checkpoint

import mmdist  # noqa: F401  (safe checkpoint loading)
from mmdist.utils.atomic_io import atomic_save
from mmdist.utils.student import STUDENT_PREFIX, student_state_dict


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (symlinks, hardlinks)."""
    if osp.realpath(a) == osp.realpath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def export_student(checkpoint: str, out: str) -> int:
    """Save the ``student.*`` weights of ``checkpoint`` without the prefix.

    Args:
        checkpoint (str): A distillation checkpoint (path or URL).
        out (str): Output path; written atomically.

    Returns:
        int: Number of tensors written.

    Raises:
        ValueError: When ``out`` is ``checkpoint`` (the training checkpoint
            would be overwritten by a model-only file).
    """
    if '://' not in checkpoint and _same_file(checkpoint, out):
        raise ValueError(
            f'output {out} is the input checkpoint {checkpoint}: exporting '
            'there would replace the training checkpoint with the student '
            'alone. Give another output path.')
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    if not any(key.startswith(STUDENT_PREFIX) for key in state):
        raise KeyError(f'{checkpoint} holds no {STUDENT_PREFIX}* weights; is '
                       'it a distillation checkpoint?')
    student = student_state_dict(state)
    meta = dict(ckpt.get('meta', {}))
    meta['exported_from'] = checkpoint
    atomic_save(dict(meta=meta, state_dict=student), out)
    return len(student)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='distillation checkpoint')
    parser.add_argument('out', help='output path of the student checkpoint')
    args = parser.parse_args()
    try:
        count = export_student(args.checkpoint, args.out)
    except ValueError as error:
        raise SystemExit(f'export_student: {error}') from None
    print(f'wrote {count} student tensors to {args.out}')


if __name__ == '__main__':
    main()
