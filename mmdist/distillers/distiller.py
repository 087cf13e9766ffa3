"""One distiller for detection, segmentation and classification."""
import contextlib
import logging
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor, nn

from mmdist.registry import MODELS
from mmdist.utils import get_module
from .adapters import HeadsForward, RoIBoxForward
from .recorder import Recorder
from .teacher import InputRenormaliser, build_frozen_teacher

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


@MODELS.register_module()
class Distiller(BaseModel):
    """Train a student with the losses of its own task plus distillation
    terms on the outputs of a frozen, stronger teacher.

    The teacher is held outside the module tree: it is not in
    ``state_dict()`` (checkpoints hold the student), not in
    ``parameters()`` (the optimizer and DDP never see it), and
    ``train()`` never takes it out of eval mode. It follows the distiller
    across devices and dtypes.

    In ``loss`` mode the student runs its own ``loss()`` (its outputs are
    recorded by forward hooks), then the teacher runs the minimal forward its
    distilled heads need (see :mod:`mmdist.distillers.adapters`) without
    autograd, on the same batch renormalised for it if its preprocessor
    differs. ``predict`` and ``tensor`` modes run the student alone.

    Args:
        student (dict): The student's model dict (e.g. ``{{_base_.model}}``).
        teacher (str | dict): The teacher's config path (``mmdet::...``,
            ``mmdist::...``, a file path) or model dict.
        teacher_ckpt (str, optional): Path or URL of the teacher's weights.
        distill_terms (list[dict]): :class:`DistillTerm` configs.
        teacher_autocast (str, optional): ``'fp16'`` or ``'bf16'`` to run the
            teacher under autocast on GPUs; losses stay in float32.
        max_nonfinite_steps (int): Steps in a row with a non-finite teacher
            output tolerated (the term is skipped for that step) before
            training stops with an error. Defaults to 10.
        data_preprocessor: Ignored; the student's preprocessor is used.
        init_cfg (dict, optional): Unused; the student initialises itself.
    """

    def __init__(self,
                 student: dict,
                 teacher: Union[str, dict],
                 distill_terms: Sequence[dict],
                 teacher_ckpt: Optional[str] = None,
                 teacher_autocast: Optional[str] = None,
                 max_nonfinite_steps: int = 10,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        student_model = MODELS.build(student)
        super().__init__(
            data_preprocessor=student_model.data_preprocessor,
            init_cfg=init_cfg)
        self.student = student_model
        frozen = build_frozen_teacher(teacher, teacher_ckpt)
        # Plain attribute, not a submodule: keeps the teacher out of
        # state_dict, parameters(), the optimizer and DDP.
        object.__setattr__(self, 'teacher', frozen)
        self.renormalise = InputRenormaliser(self.student.data_preprocessor,
                                             frozen.data_preprocessor)
        if teacher_autocast not in (None, 'fp16', 'bf16'):
            raise ValueError("teacher_autocast must be None, 'fp16' or "
                             f"'bf16', got {teacher_autocast!r}")
        self.teacher_autocast = teacher_autocast
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

        if not distill_terms:
            raise ValueError('Distiller needs at least one distill term')
        self.terms = nn.ModuleList(
            [DistillTerm(**dict(term)) for term in distill_terms])
        self._dedupe_names()
        self.recorders: List[Recorder] = []
        for term in self.terms:
            term.student_outputs = Recorder(
                get_module(self.student, term.student_module, 'student'))
            term.teacher_outputs = Recorder(
                get_module(frozen, term.teacher_module, 'teacher'))
            self.recorders += [term.student_outputs, term.teacher_outputs]
        self.teacher_forward = self._choose_teacher_forward()
        self.recorders += self.teacher_forward.attach(self.student)

    def _dedupe_names(self) -> None:
        seen: Dict[str, int] = {}
        for term in self.terms:
            count = seen.get(term.name, 0)
            seen[term.name] = count + 1
            if count:
                term.name = f'{term.name}_{count}'

    def _choose_teacher_forward(self):
        roi_terms = [t for t in self.terms
                     if t.teacher_module.startswith('roi_head.')]
        if not roi_terms:
            return HeadsForward(self.teacher,
                                [t.teacher_module for t in self.terms])
        if len(roi_terms) != len(self.terms):
            raise ValueError('RoI-head terms cannot be mixed with other '
                             'terms in one distiller')
        return RoIBoxForward(self.teacher, roi_terms[0].teacher_module,
                             roi_terms[0].student_module)

    # -- module plumbing -------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def _set_device(self, device: torch.device) -> None:
        super()._set_device(device)
        self.teacher.data_preprocessor._device = device

    def train(self, mode: bool = True) -> 'Distiller':
        super().train(mode)
        self.teacher.eval()
        return self

    # -- forward ----------------------------------------------------------
    def forward(self,
                inputs: Tensor,
                data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        """``loss``: student losses + distillation; otherwise the student's
        own ``predict``/``tensor`` forward."""
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        return self.student(inputs, data_samples, mode)

    @contextlib.contextmanager
    def _recording(self):
        for recorder in self.recorders:
            recorder.start()
        try:
            yield
        finally:
            for recorder in self.recorders:
                recorder.stop()

    def _run_teacher(self, inputs: Tensor, data_samples: Optional[list]):
        inputs = self.renormalise(inputs, data_samples)
        autocast = contextlib.nullcontext()
        if self.teacher_autocast is not None:
            dtype = (torch.float16
                     if self.teacher_autocast == 'fp16' else torch.bfloat16)
            autocast = torch.autocast(inputs.device.type, dtype=dtype)
        with torch.no_grad(), autocast:
            self.teacher_forward(self.teacher, inputs, data_samples)

    def loss(self, inputs: Tensor,
             data_samples: Optional[list]) -> Dict[str, Tensor]:
        """Student losses plus one ``loss_<name>`` per distillation term.

        Returns:
            dict[str, Tensor]: The student's losses, ``loss_<name>`` per term
            (summed over the calls of its module, e.g. FPN levels) and the
            logged parts ``<name>_inter`` / ``<name>_intra`` for DIST.
        """
        with self._recording():
            losses = self.student.loss(inputs, data_samples)
            self._run_teacher(inputs, data_samples)
            for term in self.terms:
                losses.update(self._term_losses(term, data_samples))
        return losses

    def _term_losses(self, term: DistillTerm,
                     data_samples: Optional[list]) -> Dict[str, Tensor]:
        student_outs = term.student_outputs.records
        teacher_outs = term.teacher_outputs.records
        if not student_outs or len(student_outs) != len(teacher_outs):
            raise RuntimeError(
                f'distillation term {term.name!r}: student '
                f'{term.student_module} ran {len(student_outs)} times but '
                f'teacher {term.teacher_module} ran {len(teacher_outs)} '
                'times in this step; they must pair up (e.g. one call per '
                'FPN level on both sides)')
        aligned = [
            term.align_teacher(s, t)
            for s, t in zip(student_outs, teacher_outs)
        ]
        if not all(bool(torch.isfinite(t).all()) for t in aligned):
            return self._skip_nonfinite(term, student_outs)
        self.nonfinite_in_a_row = 0
        total = 0.
        parts: Dict[str, Tensor] = {}
        for student, teacher in zip(student_outs, aligned):
            weight = term.row_weight(student, data_samples)
            loss, level_parts = term.loss(
                student, teacher, weight, return_parts=True)
            total = total + loss
            for key, value in level_parts.items():
                parts[key] = parts.get(key, 0.) + value
        out = {f'loss_{term.name}': total}
        out.update({f'{term.name}_{k}': v for k, v in parts.items()})
        return out

    def _skip_nonfinite(self, term: DistillTerm,
                        student_outs: List[Tensor]) -> Dict[str, Tensor]:
        """Policy for a non-finite teacher output: skip the term this step
        (it never reaches the student's gradients), count it, and stop
        after ``max_nonfinite_steps`` such steps in a row."""
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        if self.nonfinite_in_a_row > self.max_nonfinite_steps:
            raise FloatingPointError(
                f'teacher {term.teacher_module} produced non-finite outputs '
                f'in {self.nonfinite_in_a_row} steps in a row; stopping '
                '(check the teacher checkpoint and teacher_autocast)')
        print_log(
            f'teacher {term.teacher_module} output is not finite: skipping '
            f'{term.name!r} this step ({self.nonfinite_in_a_row} in a row, '
            f'{self.nonfinite_total} in total)',
            logger='current',
            level=logging.WARNING)
        zero = student_outs[0].new_zeros((), dtype=torch.float32)
        return {f'loss_{term.name}': zero}
