"""DIST's gradient as the student's logits approach a constant.

Prints, for each shipped (beta, gamma, tau) and student spread, the gradient
norm w.r.t. the student's logits of ``DISTLoss`` as shipped (floored) and
of the paper's form (``floor=0``), next to the task loss's on the same
logits (labels: the teacher's argmax): cross-entropy for softmax, and for
``--activation sigmoid`` binary cross-entropy summed over a row's classes
(as a one-hot target), the family of the focal losses sigmoid heads train
with. Spread 0 is a constant student, which is how a zero-initialised head
(ViT, DeiT) starts; "identical rows" is a batch whose rows are all the same
non-constant row. ``--offset`` shifts every student logit: a sigmoid
student is steepest at 0, and a focal loss's prior starts it at -4.6.

Usage:
    python .dev_scripts/dist_gradient_table.py [--rows 32] [--classes 1000]
        [--teacher-spread 3] [--activation softmax|sigmoid] [--offset 0]
"""
import argparse

import torch
import torch.nn.functional as F

from mmdist.losses import DISTLoss
from mmdist.losses.dist import DEFAULT_FLOORS

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
    parser.add_argument(
        '--activation', default='softmax', choices=sorted(DEFAULT_FLOORS))
    parser.add_argument('--offset', type=float, default=0.)
    args = parser.parse_args()
    act = args.activation
    shipped = DEFAULT_FLOORS[act]
    gen = torch.Generator().manual_seed(0)
    shape = (args.rows, args.classes)
    teacher = args.teacher_spread * torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    students = {f'{s:g}': args.offset + s * noise for s in SPREADS}
    students['identical rows'] = args.offset + noise[:1].expand(
        shape).contiguous()
    labels = teacher.argmax(1)
    onehot = F.one_hot(labels, args.classes).float()
    task, task_loss = ('CE', lambda s: F.cross_entropy(s, labels)) if (
        act == 'softmax') else ('BCE',
                                lambda s: F.binary_cross_entropy_with_logits(
                                    s, onehot, reduction='sum') / args.rows)
    print(f'{args.rows} x {args.classes} logits, {act}, teacher spread '
          f'{args.teacher_spread:g}, student offset {args.offset:g}; '
          f'gradient norms w.r.t. the logits (shipped floor {shipped:g} / '
          f'paper form, and the shipped form over {task})')
    print(f'| student spread | {task} | ' +
          ' | '.join(f'DIST {b:g}/{g:g}/{t:g}: floored / paper (x {task})'
                     for b, g, t in SETTINGS) + ' |')
    print('| --- ' * (2 + len(SETTINGS)) + '|')
    for name, student in students.items():
        ce = grad_norm(task_loss, student)
        cells = []
        for beta, gamma, tau in SETTINGS:
            norms = [
                grad_norm(
                    lambda s: DISTLoss(  # noqa: B023
                        beta=beta,
                        gamma=gamma,
                        tau=tau,
                        activation=act,
                        floor=floor)(s, teacher),
                    student) for floor in (shipped, 0.)
            ]
            cells.append(f'{norms[0]:.4g} / {norms[1]:.4g} '
                         f'({norms[0] / ce:.3g}x)')
        print(f'| {name} | {ce:.4g} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
