"""A distillation term: which student and teacher modules meet in which loss."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdist.registry import MODELS
from .recorder import Recorder

_LOSS_NAMES = {'DISTLoss': 'dist', 'KDLoss': 'kd'}


class DistillTerm(nn.Module):
    """One distillation term: a student module, a teacher module, a loss.

    Args:
        student_module (str): Dotted path in the student
            (``bbox_head.retina_cls``, ``roi_head.bbox_head.fc_cls``,
            ``decode_head.conv_seg``, ``head.fc``).
        teacher_module (str): Dotted path in the teacher.
        loss (dict): Loss config, e.g. ``dict(type='mmdist.DISTLoss')``.
        name (str, optional): Log name; the loss is logged as
            ``loss_<name>`` and its parts as ``<name>_<part>``. Defaults to
            ``dist`` for DISTLoss and ``kd`` for KDLoss.
        resize_teacher (bool): Resize the teacher's ``(N, C, H, W)`` logits
            bilinearly to the student's size when they differ (e.g. a
            SegFormer teacher at 1/4 and a dilated ResNet student at 1/8).
            Otherwise a size mismatch is an error. Defaults to False.
        ignore_index (int, optional): Drop the rows whose ground-truth
            semantic label, resized (nearest) to the logits' size, equals
            this value (segmentation only). Defaults to None (keep all rows,
            as the paper did).
    """

    def __init__(self,
                 student_module: str,
                 teacher_module: str,
                 loss: dict,
                 name: Optional[str] = None,
                 resize_teacher: bool = False,
                 ignore_index: Optional[int] = None) -> None:
        super().__init__()
        self.student_module = student_module
        self.teacher_module = teacher_module
        self.loss = MODELS.build(loss)
        self.name = name or _LOSS_NAMES.get(
            type(self.loss).__name__,
            type(self.loss).__name__.lower())
        self.resize_teacher = resize_teacher
        self.ignore_index = ignore_index
        self.student_outputs: Optional[Recorder] = None
        self.teacher_outputs: Optional[Recorder] = None
        # Counted per term: a healthy term must not reset a broken one's.
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

    def align_teacher(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Return teacher logits shaped like the student's, or raise."""
        if student.shape == teacher.shape:
            return teacher
        same_rows_cols = (
            student.dim() == teacher.dim() == 4
            and student.shape[:2] == teacher.shape[:2])
        if self.resize_teacher and same_rows_cols:
            return F.interpolate(
                teacher.float(), size=student.shape[2:], mode='bilinear',
                align_corners=False)
        hint = (' Set resize_teacher=True on this term to resize the '
                'teacher bilinearly.' if same_rows_cols else '')
        raise ValueError(
            f'distillation term {self.name!r}: student {self.student_module} '
            f'gives {tuple(student.shape)} but teacher {self.teacher_module} '
            f'gives {tuple(teacher.shape)}.{hint}')

    def row_weight(self, logits: Tensor,
                   data_samples: Optional[list]) -> Optional[Tensor]:
        """0/1 weight per pixel dropping ``ignore_index`` labels, or None."""
        if self.ignore_index is None:
            return None
        if not data_samples or not hasattr(data_samples[0], 'gt_sem_seg'):
            raise ValueError(
                f'distillation term {self.name!r} has ignore_index set, but '
                'the data samples carry no gt_sem_seg')
        labels = torch.stack(
            [s.gt_sem_seg.data for s in data_samples]).to(logits.device)
        labels = F.interpolate(
            labels.float(), size=logits.shape[2:], mode='nearest')
        return (labels[:, 0] != self.ignore_index).float()
