"""One distiller for detection, segmentation and classification."""
import contextlib
import copy
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor, nn

from mmdist.registry import MODELS
from .adapters import TeacherPlan
from .class_map import ClassNames
from .class_map import teacher_classes as find_teacher_classes
from .expand import expand_terms
from .fast_form import PRECISIONS, resolve_precision, to_float32
from .pixels import InputRenormaliser
from .queries import QueryDistillTerm, make_term
from .recorder import Recorder
from .teacher import build_frozen_teacher, make_fast_teacher
from .teacher_check import TeacherCheck
from .terms import DistillTerm


@MODELS.register_module()
class Distiller(BaseModel):
    """Train a student with the losses of its own task plus distillation
    terms on the outputs of a frozen, stronger teacher.

    The teacher is held outside the module tree: it is not in
    ``state_dict()`` (checkpoints hold the student), not in
    ``parameters()`` (the optimizer and DDP never see it), and
    ``train()`` never takes it out of eval mode. It follows the distiller
    across devices and dtypes.

    In ``loss`` mode the teacher runs the minimal forward its distilled
    modules need (see :mod:`mmdist.distillers.adapters`) without autograd,
    on the same batch renormalised for it if its preprocessor differs, and
    the student runs its own ``loss()``; outputs are recorded by forward
    hooks. The teacher goes first (lower peak memory); its box heads of
    two-stage terms run after the student, on the student's RoIs.
    ``predict`` and ``tensor`` modes run the student alone (or the teacher
    alone, fed the renormalised batch, with ``predict_with='teacher'``: how
    ``tools/test.py --teacher`` evaluates the teacher the distiller actually
    uses).

    Both models normalise their input as their own configs declare, wherever
    the packages put it: the student gets the ``data_preprocessor`` the
    Runner hands the distiller (the config's top-level one, as the Runner
    would give the student) unless its own dict has one; the teacher gets
    its own config's (see :func:`~mmdist.distillers.load_teacher_config`).

    Args:
        student (dict): The student's model dict (e.g. ``{{_base_.model}}``).
        teacher (str | dict): The teacher's config path (``mmdet::...``,
            ``mmdist::...``, a file path) or model dict.
        teacher_ckpt (str, optional): Path or URL of the teacher's weights.
        distill_terms (list[dict], optional): :class:`DistillTerm` configs,
            or short terms naming a head (``dict(head='bbox_head',
            loss=dict(type='mmdist.DISTLoss'))``; no ``head``: every class
            head) that expand, at build time and logged, into the terms its
            head family needs (see :mod:`~mmdist.distillers.expand`).
            ``None`` is ``DISTLoss`` on every class head.
        teacher_precision (str): The form the teacher runs in, decided once
            when it is built (see
            :func:`~mmdist.distillers.make_fast_teacher`):
            ``'float32'`` (default: as its config builds it), ``'bf16'`` (the
            fast form: BatchNorm folded into the convolutions, channels_last,
            bf16 autocast; float32 on hardware without native bf16, with one
            log line) or ``'fp16'`` (the same with fp16 autocast; CUDA only).
            Distilled outputs reach the losses in float32 either way; the
            same form serves ``predict_with='teacher'``.
        teacher_autocast (str, optional): Deprecated alias of
            ``teacher_precision`` (``'fp16'`` or ``'bf16'``).
        max_nonfinite_steps (int): Steps in a row with a non-finite teacher
            output tolerated per term (the term is skipped for that step)
            before training stops with an error. Defaults to 10.
        teacher_check_iters (int): For this many first training steps, log
            the teacher's accuracy on the training batch (``teacher_acc``,
            in percent like MMSeg's ``acc_seg`` and MMPretrain's accuracy)
            and warn if it is near chance (classification and segmentation;
            see :mod:`~mmdist.distillers.teacher_check`). 0 turns it off.
            Defaults to 50.
        predict_with (str): ``'student'`` (default) or ``'teacher'``: the
            model that ``predict``/``tensor`` modes run.
        data_preprocessor (dict, optional): The config's top-level
            preprocessor, handed over by the Runner; the student's when its
            own dict has none.
        student_classes (list[str], optional): The student's class names;
            the tools set them from the config's data
            (:func:`~mmdist.distillers.class_map.fill_student_classes`).
        teacher_classes (list[str], optional): The teacher's class names;
            None reads them from its config's data, else its checkpoint's
            ``meta.dataset_meta``. With both known, terms on heads that
            predict other classes map the teacher's columns onto the
            student's classes (see :mod:`~mmdist.distillers.class_map`).
        init_cfg (dict, optional): Unused; the student initialises itself.
    """

    def __init__(self,
                 student: dict,
                 teacher: Union[str, dict],
                 distill_terms: Optional[Sequence[dict]] = None,
                 teacher_ckpt: Optional[str] = None,
                 teacher_precision: str = 'float32',
                 teacher_autocast: Optional[str] = None,
                 max_nonfinite_steps: int = 10,
                 teacher_check_iters: int = 50,
                 predict_with: str = 'student',
                 data_preprocessor: Optional[dict] = None,
                 student_classes: Optional[Sequence[str]] = None,
                 teacher_classes: Optional[Sequence[str]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        teacher_precision = self._precision(teacher_precision,
                                            teacher_autocast)
        # Refused precisions (fp16 on a CPU) fail before the models are
        # built and the teacher's weights are read.
        resolve_precision(teacher_precision, get_device())
        student = copy.deepcopy(dict(student))
        if student.get('data_preprocessor') is None and data_preprocessor:
            # What MMEngine's Runner does for the model it builds.
            student['data_preprocessor'] = copy.deepcopy(data_preprocessor)
        student_model = MODELS.build(student)
        super().__init__(
            data_preprocessor=student_model.data_preprocessor,
            init_cfg=init_cfg)
        self.student = student_model
        frozen = build_frozen_teacher(teacher, teacher_ckpt, data_preprocessor)
        # Plain attribute, not a submodule: keeps the teacher out of
        # state_dict, parameters(), the optimizer and DDP.
        object.__setattr__(self, 'teacher', frozen)
        self.renormalise = InputRenormaliser(self.student.data_preprocessor,
                                             frozen.data_preprocessor)
        print_log(
            f'teacher input: {self.renormalise.describe()}', logger='current')
        if predict_with not in ('student', 'teacher'):
            raise ValueError("predict_with must be 'student' or 'teacher', "
                             f'got {predict_with!r}')
        self.teacher_precision = teacher_precision
        self.predict_with = predict_with
        self.max_nonfinite_steps = max_nonfinite_steps
        self.teacher_check = TeacherCheck(teacher_check_iters)
        # Multiplier of every term, set by mmdist.DistillWeightHook from the
        # runner's progress; 0 means the teacher does not run.
        self.distill_weight = 1.0
        self.distill_weight_scheduled = False

        if distill_terms is not None and not distill_terms:
            raise ValueError('Distiller needs at least one distill term '
                             '(or distill_terms=None: every class head)')
        # Looked up when a term needs them (other classes, class_map).
        self.class_names = ClassNames(
            student_classes, teacher_classes
            or (lambda: find_teacher_classes(teacher, frozen)))
        self.terms = nn.ModuleList([
            make_term(term) for term in expand_terms(
                distill_terms,
                self.student,
                frozen,
                class_names=self.class_names)
        ])
        self._dedupe_names()
        # DETR-family terms decode shared distillation queries on both.
        self.query_terms = [
            t for t in self.terms if isinstance(t, QueryDistillTerm)
        ]
        self.teacher_forward = TeacherPlan(
            frozen, [(t.teacher_module, t.student_module)
                     for t in self.terms if t not in self.query_terms],
            self.query_terms)
        # Before any recorder: folding replaces modules, and the form's
        # float32 casts must come first among a module's hooks.
        self.teacher_form = make_fast_teacher(
            frozen, teacher_precision, [t.teacher_module for t in self.terms],
            lambda x: self.teacher_forward.features(frozen, x))
        self.recorders: List[Recorder] = []
        for term in self.terms:
            self.recorders += term.attach(self.student, frozen)
        self.recorders += self.teacher_forward.attach(self.student)

    @staticmethod
    def _precision(precision: str, autocast: Optional[str]) -> str:
        """``teacher_precision``, with the deprecated ``teacher_autocast``
        mapped onto it."""
        if precision not in PRECISIONS:
            raise ValueError(f'teacher_precision must be one of '
                             f'{sorted(PRECISIONS)}, got {precision!r}')
        if autocast is None:
            return precision
        if autocast not in ('fp16', 'bf16'):
            raise ValueError("teacher_autocast must be None, 'fp16' or "
                             f"'bf16', got {autocast!r}")
        if precision not in ('float32', autocast):
            raise ValueError(
                f'teacher_autocast={autocast!r} contradicts '
                f'teacher_precision={precision!r}; set teacher_precision '
                'alone')
        print_log(
            f'teacher_autocast is deprecated: write '
            f'teacher_precision={autocast!r} (the fast form: bf16/fp16 '
            'autocast with channels_last and folded BatchNorm)',
            logger='current',
            level=logging.WARNING)
        return autocast

    def _dedupe_names(self) -> None:
        seen: Dict[str, int] = {}
        for term in self.terms:
            count = seen.get(term.name, 0)
            seen[term.name] = count + 1
            if count:
                term.name = f'{term.name}_{count}'

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
        """``loss``: student losses + distillation; otherwise the
        ``predict``/``tensor`` forward of the student (or of the teacher on
        its renormalised input, with ``predict_with='teacher'``)."""
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if self.predict_with == 'teacher':
            inputs = self.teacher_form.prepare(
                self.renormalise(inputs, data_samples))
            with self._teacher_mode(inputs.device):
                return self.teacher(inputs, data_samples, mode)
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

    @contextlib.contextmanager
    def _teacher_mode(self, device: torch.device):
        """No autograd, in the teacher's form (its autocast; a no-op for
        float32)."""
        with torch.no_grad(), self.teacher_form.autocast(device.type):
            yield

    def _run_teacher_features(self, inputs: Tensor,
                              data_samples: Optional[list]):
        """The teacher's backbone, neck and distilled dense heads; returns
        its features for the RoI heads that run after the student."""
        inputs = self.teacher_form.prepare(
            self.renormalise(inputs, data_samples))
        with self._teacher_mode(inputs.device):
            return self.teacher_forward.features(self.teacher, inputs,
                                                 data_samples)

    def _run_teacher_rois(self, feats) -> None:
        """The teacher's box heads on the student's sampled RoIs."""
        if self.teacher_forward.roi_forwards:
            with self._teacher_mode(feats[0].device):
                self.teacher_forward.rois(feats)

    def _run_teacher(self, inputs: Tensor, data_samples: Optional[list]):
        """The whole teacher plan (after the student has run)."""
        self._run_teacher_rois(
            self._run_teacher_features(inputs, data_samples))

    def _student_losses(self, inputs: Tensor,
                        data_samples: Optional[list]) -> Dict[str, Tensor]:
        """The student's own losses, a bare ``loss`` key renamed
        ``loss_cls``.

        MMPretrain's heads return their loss as ``loss``; MMEngine's
        ``parse_losses`` logs the total under that same key, so the head's
        value would overwrite the logged total (and what the divergence
        guard reads) in every classification run.
        """
        losses = self.student.loss(inputs, data_samples)
        if 'loss' in losses:
            losses['loss_cls'] = losses.pop('loss')
        return losses

    def loss(self, inputs: Tensor,
             data_samples: Optional[list]) -> Dict[str, Tensor]:
        """Student losses plus one ``loss_<name>`` per distillation term.

        Returns:
            dict[str, Tensor]: The student's losses, ``loss_<name>`` per term
            (summed over the calls of its module, e.g. FPN levels), the
            logged parts ``loss_<name>.inter`` / ``loss_<name>.intra`` for
            DIST (kept out of the total by :meth:`parse_losses`) and,
            for the first ``teacher_check_iters`` steps, ``teacher_acc``.
            The terms are multiplied by ``distill_weight`` (logged when a
            schedule sets it); at 0 the teacher does not run and every
            ``loss_<name>`` is 0.
        """
        if self.distill_weight == 0:
            # Distillation stopped: no teacher, no recording.
            losses = self._student_losses(inputs, data_samples)
            reference = next(self.student.parameters())
            for term in self.terms:
                losses.update(term.zero_loss(reference))
            losses['distill_weight'] = reference.new_zeros(())
            return losses
        with self._recording():
            if self.teacher_forward.student_first:
                losses = self._student_losses(inputs, data_samples)
                self._run_teacher(inputs, data_samples)
            else:
                # Teacher first: its activations are freed before the
                # student's graph is built, so the step's peak memory is
                # not the sum of both; only its recorded outputs and, for
                # RoI terms, its features wait for the student's RoIs.
                feats = self._run_teacher_features(inputs, data_samples)
                losses = self._student_losses(inputs, data_samples)
                self._run_teacher_rois(feats)
                del feats
            for term in self.query_terms:
                # After the student's own step, on its encoding of it.
                term.group.student_step(self.student)
            if self.training and self.teacher_check.active:
                losses.update(self._check_teacher(data_samples))
            for term in self.terms:
                losses.update(self._term_losses(term, data_samples))
        if self.distill_weight_scheduled:
            losses['distill_weight'] = next(
                self.student.parameters()).new_tensor(self.distill_weight)
        return losses

    def parse_losses(self, losses: Dict[str, Tensor]) -> Tuple[Tensor, dict]:
        """MMEngine's ``parse_losses``, except that the logged parts of the
        terms (``loss_<name>.inter``) are not added to the total again.

        The parts carry ``loss`` in their names so that MMEngine's default
        ``log_processor`` smooths them over the same window as
        ``loss_<name>``: what the log shows then adds up without a
        ``mean_pattern`` in the config.

        Args:
            losses (dict[str, Tensor]): The outputs of ``loss`` mode.

        Returns:
            tuple[Tensor, dict[str, Tensor]]: The total to backpropagate
            and the values to log, each part after its ``loss_<name>``.
        """
        totals = {f'loss_{term.name}' for term in self.terms}
        parts = {
            key: value
            for key, value in losses.items()
            if '.' in key and key.rsplit('.', 1)[0] in totals
        }
        kept = {k: v for k, v in losses.items() if k not in parts}
        total, log_vars = super().parse_losses(kept)
        ordered = OrderedDict(loss=log_vars.pop('loss'))
        for key in losses:
            ordered[key] = (
                parts[key].detach().mean()
                if key in parts else log_vars.pop(key))
        return total, ordered

    def _check_teacher(self,
                       data_samples: Optional[list]) -> Dict[str, Tensor]:
        """Teacher accuracy on this batch in percent, from the first term
        with logits (a name without ``loss``: logged, never backpropagated).
        """
        for term in self.terms:
            if term in self.query_terms:
                continue  # rows are queries, not images or pixels
            records = term.teacher_outputs.records
            if records and isinstance(records[0], Tensor):
                break
        else:
            return {}
        ignore = 255 if term.ignore_index is None else term.ignore_index
        # In the student's classes (a teacher from another data set).
        accuracy = self.teacher_check.update(
            term.map_teacher(records[0]), data_samples, ignore)
        if accuracy is None:
            return {}
        # Percent: the unit of the accuracies logged beside it (acc_seg).
        return {'teacher_acc': records[0].new_tensor(100. * accuracy).float()}

    def _term_losses(self, term: DistillTerm,
                     data_samples: Optional[list]) -> Dict[str, Tensor]:
        """One term's losses, or its skip when a teacher output is not
        finite (decided by all ranks together for a loss that syncs)."""
        students, teachers = term.levels()
        # The losses' contract: float32 teacher outputs, whatever the
        # teacher's form (no copy for a float32 teacher).
        teachers = [to_float32(t) for t in teachers]
        finite_here = all(bool(torch.isfinite(t).all()) for t in teachers)
        finite = finite_here
        dist = torch.distributed
        if (getattr(term.loss, 'sync', False) and dist.is_available()
                and dist.is_initialized() and dist.get_world_size() > 1):
            # The loss runs collectives: a rank skipping it alone would
            # leave the others waiting, so all skip if any must.
            flag = students[0].new_tensor(float(finite), dtype=torch.float32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag)
        if not finite:
            where = ('is not finite' if not finite_here else
                     'is not finite on another rank (sync=True)')
            return self._skip_nonfinite(term, students, where)
        term.nonfinite_in_a_row = 0
        # First finite step: both outputs are seen for the first time here.
        term.warn_if_teacher_constant(teachers)
        return term.losses(students, teachers, data_samples,
                           self.distill_weight)

    def _skip_nonfinite(self,
                        term: DistillTerm,
                        student_outs: List[Tensor],
                        where: str = 'is not finite') -> Dict[str, Tensor]:
        """Policy for a non-finite teacher output: skip the term this step
        (it never reaches the student's gradients), count it, and stop
        after ``max_nonfinite_steps`` such steps in a row."""
        term.nonfinite_in_a_row += 1
        term.nonfinite_total += 1
        if term.nonfinite_in_a_row > self.max_nonfinite_steps:
            raise FloatingPointError(
                f'teacher {term.teacher_module} produced non-finite outputs '
                f'in {term.nonfinite_in_a_row} steps in a row (term '
                f'{term.name!r}); stopping (check the teacher checkpoint and '
                'teacher_precision)')
        print_log(
            f'teacher {term.teacher_module} output {where}: skipping '
            f'{term.name!r} this step ({term.nonfinite_in_a_row} in a row, '
            f'{term.nonfinite_total} in total)',
            logger='current',
            level=logging.WARNING)
        return term.zero_loss(student_outs[0])
