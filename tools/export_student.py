"""Write the student of a distillation checkpoint as a plain checkpoint.

The result loads into the stock MMDet/MMSeg/MMPretrain model built from the
student's own config (``load_checkpoint(model, out, strict=True)``).

Usage: python tools/export_student.py CHECKPOINT OUT
"""
import argparse

import mmdist  # noqa: F401  (safe checkpoint loading)
import torch
from mmengine.runner.checkpoint import _load_checkpoint

from mmdist.utils.student import STUDENT_PREFIX, student_state_dict


def export_student(checkpoint: str, out: str) -> int:
    """Save the ``student.*`` weights of ``checkpoint`` without the prefix.

    Returns:
        int: Number of tensors written.
    """
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    if not any(key.startswith(STUDENT_PREFIX) for key in state):
        raise KeyError(f'{checkpoint} holds no {STUDENT_PREFIX}* weights; is '
                       'it a distillation checkpoint?')
    student = student_state_dict(state)
    meta = dict(ckpt.get('meta', {}))
    meta['exported_from'] = checkpoint
    torch.save(dict(meta=meta, state_dict=student), out)
    return len(student)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='distillation checkpoint')
    parser.add_argument('out', help='output path of the student checkpoint')
    args = parser.parse_args()
    count = export_student(args.checkpoint, args.out)
    print(f'wrote {count} student tensors to {args.out}')


if __name__ == '__main__':
    main()
