"""DIST's gradient as the student's logits approach a constant.

Prints, for each shipped (beta, gamma, tau) and student spread, the gradient
norm w.r.t. the student's logits of ``DISTLoss`` as shipped (floored) and
of the paper's form (``floor=0``), next to cross-entropy's on the same
logits (labels: the teacher's argmax). Spread 0 is a constant student, which
is how a zero-initialised head (ViT, DeiT) starts; "identical rows" is a
batch whose rows are all the same non-constant row.

Usage:
    python tools/analysis/dist_gradient_table.py [--rows 32] [--classes 1000]
        [--teacher-spread 3]
"""
import argparse

import torch
import torch.nn.functional as F

from mmdist.losses import DISTLoss
from mmdist.losses.dist import DEFAULT_FLOOR

SETTINGS = [(1., 1., 1.), (2., 2., 1.), (2., 2., 4.)]
SPREADS = [0., 1e-6, 1e-3, 1e-2, 1e-1, 1.]


def grad_norm(loss_fn, student: torch.Tensor) -> float:
    """Norm of ``d loss_fn(student) / d student``."""
    student = student.clone().requires_grad_()
    loss_fn(student).backward()
    return float(student.grad.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', type=int, default=32)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--teacher-spread', type=float, default=3.)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    shape = (args.rows, args.classes)
    teacher = args.teacher_spread * torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    students = {f'{s:g}': s * noise for s in SPREADS}
    students['identical rows'] = noise[:1].expand(shape).contiguous()
    labels = teacher.argmax(1)
    print(f'{args.rows} x {args.classes} logits, teacher spread '
          f'{args.teacher_spread:g}; gradient norms w.r.t. the logits '
          '(shipped floor / paper form, and the shipped form over CE)')
    print('| student spread | cross-entropy | ' + ' | '.join(
        f'DIST {b:g}/{g:g}/{t:g}: floored / paper (x CE)'
        for b, g, t in SETTINGS) + ' |')
    print('| --- ' * (2 + len(SETTINGS)) + '|')
    for name, student in students.items():
        ce = grad_norm(lambda s: F.cross_entropy(s, labels), student)
        cells = []
        for beta, gamma, tau in SETTINGS:
            norms = [
                grad_norm(
                    lambda s: DISTLoss(  # noqa: B023
                        beta=beta, gamma=gamma, tau=tau, floor=floor)(
                            s, teacher), student)
                for floor in (DEFAULT_FLOOR, 0.)
            ]
            cells.append(f'{norms[0]:.4g} / {norms[1]:.4g} '
                         f'({norms[0] / ce:.3g}x)')
        print(f'| {name} | {ce:.4g} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
