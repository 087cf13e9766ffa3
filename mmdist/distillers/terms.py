"""A distillation term: which student and teacher modules meet in which loss,
and what belongs only to that pair (a connector, a resize, an ignore mask).
"""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from mmdist.registry import MODELS
from mmdist.utils import get_module
from .class_map import ClassMapping
from .connectors import check_connector_levels
from .families import family_of
from .recorder import Recorder
from .shape_probe import resizable, shape_mismatch

_LOSS_NAMES = {'DISTLoss': 'dist', 'KDLoss': 'kd'}
# Constant: a spread under 1e-5 of its scale (at least 1, a logit's unit),
# i.e. float32 rounding noise that gives no loss anything to follow.
CONSTANT_RTOL = 1e-5


class DistillTerm(nn.Module):
    """One distillation term: a student module, a teacher module, a loss.

    Each call of a module gives one output; an output that is a tuple or
    list of tensors (an FPN ``neck``) gives one *level* per element. Student
    and teacher levels pair up in order (FPN levels of a detection head's
    cls conv, called once per level, or of a neck, called once), the loss
    is computed per pair and summed.

    Args:
        student_module (str): Dotted path in the student
            (``bbox_head.retina_cls``, ``roi_head.bbox_head.fc_cls``,
            ``decode_head.conv_seg``, ``head.fc``, ``neck``).
        teacher_module (str): Dotted path in the teacher.
        loss (dict): Loss config, e.g. ``dict(type='mmdist.DISTLoss')`` or
            ``dict(type='mmdist.FeatureMSELoss')``.
        name (str, optional): Log name; the loss is logged as
            ``loss_<name>`` and its parts as ``loss_<name>.<part>``
            (not added to the total again). Defaults to
            ``dist`` for DISTLoss and ``kd`` for KDLoss.
        resize_teacher (bool): Resize the teacher's ``(N, C, H, W)`` logits
            bilinearly to the student's size when they differ (e.g. a
            SegFormer teacher at 1/4 and a dilated ResNet student at 1/8).
            Otherwise a size mismatch is an error. Defaults to False.
        ignore_index (int, optional): Drop the rows whose ground-truth
            semantic label, resized (nearest) to the logits' size, equals
            this value (segmentation only). Defaults to None (keep all rows,
            as the paper did).
        connector (dict, optional): A trainable module applied to each
            student level before the loss, e.g.
            ``dict(type='mmdist.ConvConnector', in_channels=256,
            out_channels=256, num_levels=5)``. Its parameters belong to the
            distiller (optimizer, DDP, training checkpoints), never to the
            exported student.
        max_calls (int, optional): Keep only the first ``max_calls`` calls
            of each module in a step (a cascade stage that the segmentor
            calls again to feed the next stage: the first call is the one
            its own loss trains). Defaults to None (every call).
        teacher_columns (dict, optional): The teacher's class columns for
            the student's classes, as the expansion resolves a term's
            ``class_map`` (a teacher trained on another label set):
            ``dict(columns=[...], classes=80, background=False,
            combine='max')``, see
            :class:`~mmdist.distillers.class_map.ClassMapping`. Defaults to
            None (the columns correspond as they are).

    A module that is itself a head listed in
    :mod:`mmdist.distillers.families` (``decode_head`` of Segmenter) is
    recorded from its ``forward()``, which models call directly, so that its
    output is seen; other modules through forward hooks.
    """

    def __init__(self,
                 student_module: str,
                 teacher_module: str,
                 loss: dict,
                 name: Optional[str] = None,
                 resize_teacher: bool = False,
                 ignore_index: Optional[int] = None,
                 connector: Optional[dict] = None,
                 max_calls: Optional[int] = None,
                 teacher_columns: Optional[dict] = None) -> None:
        super().__init__()
        if max_calls is not None and (not isinstance(max_calls, int)
                                      or max_calls < 1):
            raise ValueError(f'max_calls must be a positive int or None, got '
                             f'{max_calls!r}')
        self.max_calls = max_calls
        self.student_module = student_module
        self.teacher_module = teacher_module
        self.loss = MODELS.build(loss)
        self.name = name or _LOSS_NAMES.get(
            type(self.loss).__name__,
            type(self.loss).__name__.lower())
        self.resize_teacher = resize_teacher
        self.ignore_index = ignore_index
        self.connector = MODELS.build(connector) if connector else None
        self.class_mapping = None
        if teacher_columns is not None:
            activation = getattr(self.loss, 'activation', None)
            if activation is None:
                raise ValueError(
                    f'distillation term {self.name!r}: teacher_columns maps '
                    'class columns, but its loss '
                    f'{type(self.loss).__name__} does not compare class '
                    'scores (features, mimic); leave the mapping out')
            self.class_mapping = ClassMapping.from_config(
                teacher_columns, activation)
        self.student_outputs: Optional[Recorder] = None
        self.teacher_outputs: Optional[Recorder] = None
        # Counted per term: a healthy term must not reset a broken one's.
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.teacher_checked = False

    def attach(self, student: nn.Module, teacher: nn.Module) -> List[Recorder]:
        """Start recording the two modules; returns their recorders."""
        recorders = []
        for side, model, path in (('student', student, self.student_module),
                                  ('teacher', teacher, self.teacher_module)):
            module = get_module(model, path, side)
            recorder = Recorder(
                module, record_forward=family_of(module) is not None)
            setattr(self, f'{side}_outputs', recorder)
            recorders.append(recorder)
        return recorders

    def map_teacher(self, teacher: Tensor) -> Tensor:
        """The teacher's columns of the student's classes (with
        ``teacher_columns``), else ``teacher`` itself."""
        if self.class_mapping is None:
            return teacher
        return self.class_mapping(teacher)

    def align_teacher(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Return teacher logits shaped like the student's, or raise."""
        if student.shape == teacher.shape:
            return teacher
        if self.resize_teacher and resizable(student.shape, teacher.shape):
            return F.interpolate(
                teacher.float(),
                size=student.shape[2:],
                mode='bilinear',
                align_corners=False)
        raise ValueError(
            shape_mismatch(self.name, self.student_module, self.teacher_module,
                           student.shape, teacher.shape))

    def row_weight(self, logits: Tensor,
                   data_samples: Optional[list]) -> Optional[Tensor]:
        """0/1 weight per pixel dropping ``ignore_index`` labels, or None."""
        if self.ignore_index is None:
            return None
        if not data_samples or not hasattr(data_samples[0], 'gt_sem_seg'):
            raise ValueError(
                f'distillation term {self.name!r} has ignore_index set, but '
                'the data samples carry no gt_sem_seg')
        labels = torch.stack([s.gt_sem_seg.data
                              for s in data_samples]).to(logits.device)
        labels = F.interpolate(
            labels.float(), size=logits.shape[2:], mode='nearest')
        return (labels[:, 0] != self.ignore_index).float()

    # -- levels -----------------------------------------------------------
    def _levels(self, records: list, side: str, path: str) -> List[Tensor]:
        levels = []
        if self.max_calls is not None:
            records = records[:self.max_calls]
        for output in records:
            items = output if isinstance(output, (tuple, list)) else [output]
            for item in items:
                if not isinstance(item, Tensor):
                    raise TypeError(
                        f'distillation term {self.name!r}: {side} {path} '
                        f'returns {type(item).__name__}, not a tensor or a '
                        'tuple/list of tensors; point the term at a module '
                        'that returns logits or feature maps')
                levels.append(item)
        return levels

    def levels(self) -> Tuple[List[Tensor], List[Tensor]]:
        """The recorded student and teacher levels of this step, paired.

        Raises:
            RuntimeError: Naming both modules when the counts differ.
        """
        students = self._levels(self.student_outputs.records, 'student',
                                self.student_module)
        teachers = self._levels(self.teacher_outputs.records, 'teacher',
                                self.teacher_module)
        if not students or len(students) != len(teachers):
            raise RuntimeError(
                f'distillation term {self.name!r}: student '
                f'{self.student_module} gave {len(students)} outputs but '
                f'teacher {self.teacher_module} gave {len(teachers)} in this '
                'step; they must pair up (e.g. one per FPN level on both '
                f'sides).{self._hint(len(students), len(teachers))}')
        return students, teachers

    def _hint(self, students: int, teachers: int) -> str:
        """Likely causes of a count mismatch, for the error."""
        hints = []
        for side, count in (('student', students), ('teacher', teachers)):
            if count == 0:
                path = getattr(self, f'{side}_module')
                hints.append(
                    f' {side} {path} recorded nothing: if it is a container '
                    '(ModuleList/Sequential of per-level convs) that the '
                    'head indexes rather than calls, name its elements; if '
                    'the model calls its forward() directly (a head inside '
                    'another head), name the module inside it that holds '
                    "the logits, or use the short form dict(head=..., "
                    'loss=...), which knows where each head family keeps '
                    'them.')
        if students and teachers and students % teachers == 0 and (
                self.max_calls is None):
            hints.append(
                f' The student calls {self.student_module} '
                f'{students // teachers} times as often as the teacher: if '
                'the model calls it again for another purpose (a cascade '
                'stage feeding the next), set max_calls on the term.')
        return ''.join(hints)

    def connect(self, student: Tensor, level: int) -> Tensor:
        """Apply the connector (if any) to one student level."""
        if self.connector is None:
            return student
        connector = self.connector
        expected = getattr(connector, 'in_channels', None)
        if expected is not None and (student.dim() < 2
                                     or student.shape[1] != expected):
            raise ValueError(
                f'distillation term {self.name!r}: student '
                f'{self.student_module} gives {student.shape[1]} channels '
                f'(shape {tuple(student.shape)}) but its connector takes '
                f'{expected}; teacher {self.teacher_module} is compared '
                'after it')
        return connector(student, level)

    # -- loss -------------------------------------------------------------
    def losses(self,
               students: List[Tensor],
               teachers: List[Tensor],
               data_samples: Optional[list],
               scale: float = 1.0) -> Dict[str, Tensor]:
        """``loss_<name>`` summed over the levels (times ``scale``) and the
        loss's logged parts ``loss_<name>.<part>`` (see :meth:`part_key`).
        """
        if self.connector is not None:
            check_connector_levels(
                self.connector, len(students),
                f'distillation term {self.name!r}: student '
                f'{self.student_module} and teacher {self.teacher_module}')
        total = 0.
        parts: Dict[str, Tensor] = {}
        for level, (student, teacher) in enumerate(zip(students, teachers)):
            student = self.connect(student, level)
            teacher = self.align_teacher(student, self.map_teacher(teacher))
            weight = self.row_weight(student, data_samples)
            loss, level_parts = self.loss(
                student, teacher, weight, return_parts=True)
            total = total + loss
            for key, value in level_parts.items():
                parts[key] = parts.get(key, 0.) + value
        out = {f'loss_{self.name}': total * scale}
        out.update({
            self.part_key(k): v.detach() * scale
            for k, v in parts.items()
        })
        return out

    def part_key(self, part: str) -> str:
        """The log key of one part of the loss, ``loss_<name>.<part>``.

        Named with ``loss`` so that MMEngine's default ``mean_pattern``
        smooths it over the logging window like ``loss_<name>``, which the
        parts sum to; :meth:`Distiller.parse_losses` keeps it out of the
        total.
        """
        return f'loss_{self.name}.{part}'

    def warn_if_teacher_constant(self, teachers: List[Tensor]) -> bool:
        """Warn (once per term, through the current MMLogger) when the
        teacher's output is constant, so that this term's loss cannot move
        the student.

        A random teacher in eval mode (RTMDet: logits of std 5e-7), a
        zero-initialised head (ViT, DeiT) or BatchNorm at its initial
        statistics (MobileNet, EfficientNet) gives such an output; DIST then
        stays at exactly 2 and passes no gradient.

        Args:
            teachers (list[Tensor]): This step's float32 teacher levels.

        Returns:
            bool: Whether it warned (False after the first call).
        """
        if self.teacher_checked or not teachers:
            return False
        self.teacher_checked = True
        with torch.no_grad():
            std = max(
                float(t.std()) if t.numel() > 1 else 0. for t in teachers)
            scale = max(float(t.abs().mean()) for t in teachers)
            mean = float(teachers[0].mean())
        if std > CONSTANT_RTOL * max(scale, 1.):
            return False
        levels = f' over {len(teachers)} levels' if len(teachers) > 1 else ''
        print_log(
            f'distillation term {self.name!r}: teacher {self.teacher_module} '
            f'gives a constant output (std {std:.3g} around {mean:.4g}'
            f'{levels}), so loss_{self.name} cannot '
            'move the student (it stays at its value for a constant teacher, '
            '2 for DIST). A teacher without trained weights gives this: a '
            'random one, a zero-initialised head (ViT, DeiT) or BatchNorm at '
            'its initial statistics; check teacher_ckpt.',
            logger='current',
            level=logging.WARNING)
        return True

    def zero_loss(self, reference: Tensor) -> Dict[str, Tensor]:
        """A zero ``loss_<name>`` for a skipped step that still involves the
        term's own parameters, so that DDP finds every parameter used."""
        zero = reference.new_zeros((), dtype=torch.float32)
        for param in self.parameters():
            if param.requires_grad:
                zero = zero + param.sum() * 0.
        return {f'loss_{self.name}': zero}
