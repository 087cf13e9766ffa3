"""Teacher-student discrepancy over a data set, as the paper measures it.

For every distillation term of a distiller, the student and the teacher run
on the same batches (the teacher with its own minimal forward, the student
with the same backbone-neck-head forward and no loss), and their logits are
compared row by row with the term's activation:

- ``kl``: mean over rows of ``KL(teacher || student)`` (the binary KL summed
  over a row's classes for sigmoid heads);
- ``pearson``: mean over rows of the Pearson correlation of the two
  prediction vectors (the quantity DIST's inter-class term matches).

A larger KL with a still-high Pearson correlation is the paper's picture of
a stronger teacher: exact matching gets harder while relations survive.
Only logits terms are measured: feature terms (``FeatureMSELoss`` on a neck
or backbone) are skipped, and the result says so. RoI-head terms are not
supported (a student needs proposals to score).
"""
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor

from mmdist.distillers import Distiller, HeadsForward
from mmdist.losses.rows import as_rows


def _row_statistics(student: Tensor, teacher: Tensor, activation: str,
                    tau: float, num_classes: Optional[int]):
    """Sum over rows of KL and of Pearson correlation, and the row count."""
    zs, _ = as_rows(student.float() / tau, num_classes)
    zt, _ = as_rows(teacher.float() / tau, num_classes)
    if activation == 'softmax':
        log_ps, log_pt = F.log_softmax(zs, 1), F.log_softmax(zt, 1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
        ys, yt = log_ps.exp(), log_pt.exp()
    else:
        pt = torch.sigmoid(zt)
        kl = (pt * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - pt) *
              (F.logsigmoid(-zt) - F.logsigmoid(-zs))).sum(1)
        ys, yt = torch.sigmoid(zs), pt
    ys = ys - ys.mean(1, keepdim=True)
    yt = yt - yt.mean(1, keepdim=True)
    rho = (ys * yt).sum(1) / (
        ys.norm(dim=1).clamp_min(1e-8) * yt.norm(dim=1).clamp_min(1e-8))
    return float(kl.sum()), float(rho.sum()), kl.numel()


@torch.no_grad()
def measure_discrepancy(
        model: Distiller,
        batches: Iterable,
        max_batches: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Mean teacher-student KL and Pearson correlation per distillation term.

    Args:
        model (Distiller): The distiller (student weights loaded).
        batches (Iterable): Data batches as a dataloader yields them.
        max_batches (int, optional): Stop after this many batches.

    Returns:
        dict: ``{term name: {'kl': float, 'pearson': float, 'rows': int}}``
        for every logits term; ``{term name: {'skipped': reason}}`` for
        feature terms.
    """
    logits_terms = [t for t in model.terms if hasattr(t.loss, 'activation')]
    skipped = {
        t.name:
        dict(skipped=f'feature term ({type(t.loss).__name__} on '
             f'{t.student_module}): not a logits discrepancy')
        for t in model.terms if t not in logits_terms
    }
    for name, info in skipped.items():
        print_log(
            f'discrepancy: skipping {name!r}, {info["skipped"]}',
            logger='current')
    if any(t.teacher_module.startswith('roi_head.') for t in logits_terms):
        raise ValueError('discrepancy of RoI-head terms is not supported: '
                         'the student needs proposals to score')
    model.eval()
    student_heads = HeadsForward(
        model.student, [t.student_module for t in logits_terms],
        owner='student')
    totals = {t.name: [0.0, 0.0, 0] for t in logits_terms}
    for index, data in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        data = model.data_preprocessor(data, False)
        inputs, samples = data['inputs'], data.get('data_samples')
        with model._recording():
            student_heads(model.student.extract_feat(inputs))
            model._run_teacher(inputs, samples)
            for term in logits_terms:
                loss = term.loss
                for s, t in zip(*term.levels()):
                    kl, rho, rows = _row_statistics(s,
                                                    term.align_teacher(s, t),
                                                    loss.activation, loss.tau,
                                                    loss.num_classes)
                    total = totals[term.name]
                    total[0] += kl
                    total[1] += rho
                    total[2] += rows
    result = {
        name:
        dict(kl=kl / max(rows, 1), pearson=rho / max(rows, 1), rows=rows)
        for name, (kl, rho, rows) in totals.items()
    }
    result.update(skipped)
    return result
