"""Shared distillation queries: DIST on the class heads of the DETR family.

Each DETR-family model matches its own learned queries to the ground truth,
so query ``i`` of the student and query ``i`` of the teacher describe
different objects. Here both models decode one more group of queries, the
same for both (KD-DETR's *distillation points*): after each model's encoder,
the group is decoded by a separate call of that model's own
``forward_decoder`` (so it never enters the attention of the detection or
denoising queries) and scored by the class branch of the chosen decoder
layers. Rows are (image, query) and correspond by construction.

The group is built from boxes ``(cx, cy, w, h)`` in ``[0, 1]``, the way each
model turns its own reference boxes into decoder inputs (content
embeddings are zeros):

- DINO: reference boxes; Deformable DETR: reference boxes (two-stage: the
  model's own box-to-query projection) or their centres;
- DAB-DETR: the boxes as its anchor queries;
- DETR and Conditional DETR take no boxes: the group is positional query
  embeddings (the teacher's learned ones, and random ones with their
  per-dimension mean and spread), which both models must be as wide for.

Samplers: ``num_random`` random boxes per image, drawn afresh each step from
the group's own generator (the models' own randomness, DINO's denoising
noise included, is unchanged), and ``num_teacher`` boxes of the teacher that
need no extra decoder pass: its two-stage encoder proposals (DINO,
two-stage Deformable DETR, best first), its learned reference points
(Deformable DETR) or anchors (DAB-DETR).

The teacher runs backbone, neck, encoder (and ``pre_decoder`` when its boxes
are sampled) and its decoder over the group only; the student's own
``loss()`` runs unchanged, its decoder inputs (encoder memory and masks) are
kept, and the group is decoded on them after it.
"""
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmdist.utils import get_module
from .families import family_of
from .mask_queries import (CLASS_HINT, MASK_QUERY_DEFAULTS, MaskQueryGroup,
                           pick_layers)
from .recorder import GroupRecords
from .terms import DistillTerm

#: Term option ``queries``: what each key means is in :class:`QueryGroup`.
QUERY_DEFAULTS = dict(
    num_random=100, num_teacher=100, layers='last', fg_weight=True, seed=0)
_BOX_KINDS = ('dino', 'deformable', 'dab')
_EMBED_KINDS = ('detr', 'conditional')
# Keys of forward_decoder's inputs that describe the queries; the rest
# (memory, masks, spatial shapes...) are the image's.
_QUERY_KEYS = ('query', 'query_pos', 'reference_points', 'dn_mask')


def detector_kind(model: nn.Module) -> str:
    """Which DETR variant a model is, by its class (subclasses included).

    Raises:
        TypeError: Not a DETR-family detector with shared-query support.
    """
    names = [cls.__name__ for cls in type(model).__mro__]
    if 'DDQDETR' in names:
        raise TypeError(
            'DDQ-DETR selects distinct queries inside its decoder (its '
            'cache of the dense and sparse query split): shared '
            'distillation queries are not implemented for it')
    for name, kind in (('DINO', 'dino'), ('DeformableDETR', 'deformable'),
                       ('DABDETR', 'dab'), ('ConditionalDETR',
                                            'conditional'), ('DETR', 'detr')):
        if name in names:
            return kind
    raise TypeError(f'{type(model).__name__} is not a DETR-family detector '
                    '(DETR, Deformable DETR, Conditional DETR, DAB-DETR, '
                    'DINO): shared distillation queries need one')


def _inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _decoder_params(model: nn.Module) -> set:
    """Named inputs of ``forward_decoder`` (DINO's ``**kwargs`` would pass
    anything else on to its decoder)."""
    params = inspect.signature(type(model).forward_decoder).parameters
    return {n for n in params if n != 'self'}


def group_inputs(model: nn.Module, kind: str, points: Tensor) -> Dict:
    """The query inputs of ``forward_decoder`` for a distillation group.

    Args:
        model (nn.Module): The detector that decodes the group.
        kind (str): Its :func:`detector_kind`.
        points (Tensor): ``(B, Q, 4)`` boxes ``(cx, cy, w, h)`` in
            ``[0, 1]`` (box kinds) or ``(B, Q, C)`` positional query
            embeddings (DETR, Conditional DETR).

    Returns:
        dict: ``query``, ``query_pos``, ``reference_points`` and ``dn_mask``
        as the model's ``forward_decoder`` takes them.
    """
    batch, num = points.shape[:2]
    dims = model.embed_dims
    zeros = points.new_zeros(batch, num, dims)
    if kind == 'dino':
        return dict(query=zeros, reference_points=points, dn_mask=None)
    if kind == 'deformable':
        if model.as_two_stage:
            # The model's own projection of a box into its query pair.
            embed = model.pos_trans_norm(
                model.pos_trans_fc(
                    model.get_proposal_pos_embed(_inverse_sigmoid(points))))
            query_pos, query = torch.split(embed, dims, dim=2)
            return dict(
                query=query, query_pos=query_pos, reference_points=points)
        return dict(
            query=zeros, query_pos=zeros, reference_points=points[..., :2])
    if kind == 'dab':
        anchors = _inverse_sigmoid(points[..., :model.query_dim])
        return dict(query=zeros, query_pos=anchors)
    return dict(query=zeros, query_pos=points)


def class_logits(model: nn.Module, hidden_states: Tensor,
                 layers: Sequence[int]) -> List[Tensor]:
    """The class logits of the chosen decoder layers, ``(B*Q, C)`` each.

    Args:
        model (nn.Module): The detector (its ``bbox_head`` scores).
        hidden_states (Tensor): ``(L, B, Q, C)`` decoder outputs (or
            ``(B, Q, C)`` for a decoder that returns its last layer only).
        layers (Sequence[int]): Decoder layers to score.
    """
    if hidden_states.dim() == 3:
        hidden_states = hidden_states[None]
    head = model.bbox_head
    out = []
    for layer in layers:
        branch = (
            head.cls_branches[layer]
            if hasattr(head, 'cls_branches') else head.fc_cls)
        logits = branch(hidden_states[layer])
        out.append(logits.reshape(-1, logits.shape[-1]))
    return out


def encode(model: nn.Module, feats: Sequence[Tensor],
           data_samples: list) -> Tuple[Dict, Dict]:
    """``pre_transformer`` and ``forward_encoder`` of a detector.

    Returns:
        tuple[dict, dict]: The image part of ``forward_decoder``'s inputs
        (memory, masks, positions, spatial shapes) and the encoder's
        outputs (what ``pre_decoder`` takes).
    """
    encoder_inputs, decoder_inputs = model.pre_transformer(feats, data_samples)
    encoder_outputs = model.forward_encoder(**encoder_inputs)
    decoder_inputs = dict(decoder_inputs)
    decoder_inputs['memory'] = encoder_outputs['memory']
    return decoder_inputs, encoder_outputs


def decode(model: nn.Module, kind: str, image_inputs: Dict, points: Tensor,
           layers: Sequence[int]) -> List[Tensor]:
    """Decode a distillation group on one model and score it.

    Args:
        model (nn.Module): The detector.
        kind (str): Its :func:`detector_kind`.
        image_inputs (dict): The image part of ``forward_decoder``'s inputs
            (from :func:`encode` or recorded from the model's own step).
        points (Tensor): The group (see :func:`group_inputs`).
        layers (Sequence[int]): Decoder layers to score.

    Returns:
        list[Tensor]: ``(B*Q, C)`` logits per layer.
    """
    names = _decoder_params(model)
    inputs = {
        k: v
        for k, v in image_inputs.items() if k in names and k not in _QUERY_KEYS
    }
    if image_inputs['memory'].dtype == torch.float64:
        # A float64 model: MMDet builds its positional encodings in
        # float32 whatever the model's dtype.
        inputs = {
            k:
            v.double() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in inputs.items()
        }
        points = points.double()
    else:
        points = points.float()  # boxes keep float32 under autocast
    inputs.update({
        k: v
        for k, v in group_inputs(model, kind, points).items() if k in names
    })
    # The class method: the instance's forward_decoder records the stock
    # step's inputs (see _DecoderCapture).
    outputs = type(model).forward_decoder(model, **inputs)
    return class_logits(model, outputs['hidden_states'], layers)


class _DecoderCapture:
    """Instance-level ``forward_decoder`` that keeps the inputs of the
    model's own call while capturing is on (the encoder memory, with its
    graph, and the masks), so the group is decoded on the same encoding.

    Holds the model as an attribute (no closure) so a deep copy of the
    model captures into its own copy.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active = False
        self.inputs: Optional[Dict] = None

    def __call__(self, **kwargs):
        if self.active:
            self.inputs = kwargs
        return type(self.model).forward_decoder(self.model, **kwargs)

    def reset(self, active: bool) -> None:
        self.active = active
        self.inputs = None


class QueryGroup:
    """One set of shared distillation queries for a student and a teacher.

    Args:
        student (nn.Module): The student detector.
        teacher (nn.Module): The frozen teacher detector.
        num_random (int): Random boxes per image (random positional
            embeddings for DETR and Conditional DETR), drawn afresh each
            step. Defaults to 100.
        num_teacher (int): The teacher's boxes per image, from the inputs of
            its decoder (see the module docstring), at most its number of
            queries. Defaults to 100.
        layers (str | int | list[int]): Decoder layers whose class logits
            are distilled: ``'last'``, ``'all'``, an index or a list.
            Defaults to ``'last'``.
        fg_weight (bool): Weight each row by the teacher's foreground
            score (its highest class probability; 1 - no-object for DETR),
            since most random boxes lie on background. Defaults to True.
        seed (int): Seed of the group's own random generator. Defaults to 0.
        mapped_classes (bool): The term maps the teacher's classes onto
            the student's (a teacher of another label set), so the two
            class counts may differ. Defaults to False.
    """

    def __init__(self,
                 student: nn.Module,
                 teacher: nn.Module,
                 num_random: int = 100,
                 num_teacher: int = 100,
                 layers='last',
                 fg_weight: bool = True,
                 seed: int = 0,
                 mapped_classes: bool = False) -> None:
        self.student_kind = detector_kind(student)
        self.teacher_kind = detector_kind(teacher)
        box_kinds = {
            self.student_kind in _BOX_KINDS, self.teacher_kind in _BOX_KINDS
        }
        if len(box_kinds) > 1:
            raise ValueError(
                f'shared distillation queries: the student '
                f'({type(student).__name__}) and the teacher '
                f'({type(teacher).__name__}) take different queries (boxes '
                'for DINO, Deformable and DAB-DETR; positional embeddings '
                'for DETR and Conditional DETR)')
        self.boxes = self.student_kind in _BOX_KINDS
        if not self.boxes and student.embed_dims != teacher.embed_dims:
            raise ValueError(
                'shared distillation queries for DETR / Conditional DETR '
                'are positional embeddings both decoders take: the student '
                f'is {student.embed_dims} wide and the teacher '
                f'{teacher.embed_dims}')
        s_classes = _cls_out(student)
        t_classes = _cls_out(teacher)
        if s_classes != t_classes and not mapped_classes:
            raise ValueError(
                f'shared distillation queries: the student scores '
                f'{s_classes} classes per query and the teacher {t_classes}'
                f'{CLASS_HINT}')
        for name, value in (('num_random', num_random), ('num_teacher',
                                                         num_teacher)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f'queries: {name} must be a non-negative '
                                 f'int, got {value!r}')
        if num_random + num_teacher == 0:
            raise ValueError('queries: num_random + num_teacher must be > 0')
        if num_teacher > teacher.num_queries:
            raise ValueError(
                f'queries: num_teacher={num_teacher} is more than the '
                f'teacher\'s {teacher.num_queries} queries')
        self.num_random = num_random
        self.num_teacher = num_teacher
        self.fg_weight = fg_weight
        self.student_layers = pick_layers(student.decoder.num_layers, layers,
                                          'student')
        self.teacher_layers = pick_layers(teacher.decoder.num_layers, layers,
                                          'teacher')
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f'queries: layers={layers!r} gives '
                f'{len(self.student_layers)} student and '
                f'{len(self.teacher_layers)} teacher decoder layers; name '
                'as many of each (e.g. layers=\'last\')')
        self.generator = torch.Generator().manual_seed(seed)
        self.capture = student.__dict__.get('forward_decoder')
        if not isinstance(self.capture, _DecoderCapture):
            self.capture = _DecoderCapture(student)
            student.forward_decoder = self.capture
        self.student_records = GroupRecords(self.capture)
        self.teacher_records = GroupRecords()
        self.points: Optional[Tensor] = None
        #: Groups decoded so far by each model (tests and logs read them).
        self.decoded = dict(student=0, teacher=0)

    # -- samplers ---------------------------------------------------------
    def _random(self, teacher: nn.Module, batch: int, like: Tensor) -> Tensor:
        shape = (batch, self.num_random)
        if self.boxes:
            centres = torch.rand(*shape, 2, generator=self.generator)
            sizes = 0.02 + 0.98 * torch.rand(
                *shape, 2, generator=self.generator)
            return torch.cat([centres, sizes], -1).to(like)
        weight = teacher.query_embedding.weight.detach().float()
        noise = torch.randn(*shape, weight.shape[1], generator=self.generator)
        return (noise.to(like) * weight.std(0) + weight.mean(0)).to(like)

    def _from_teacher(self, teacher: nn.Module, image_inputs: Dict,
                      encoder_outputs: Dict, data_samples: list,
                      batch: int) -> Tensor:
        kind = self.teacher_kind
        if kind in _EMBED_KINDS:
            weight = teacher.query_embedding.weight[:self.num_teacher]
            return weight[None].expand(batch, -1, -1)
        if kind == 'dab':
            anchors = teacher.query_embedding.weight[:self.num_teacher]
            boxes = anchors.sigmoid()
            if boxes.shape[-1] == 2:
                boxes = torch.cat([boxes, torch.full_like(boxes, 0.1)], -1)
            return boxes[None].expand(batch, -1, -1)
        kwargs = dict(encoder_outputs)
        names = inspect.signature(type(teacher).pre_decoder).parameters
        if 'batch_data_samples' in names:
            kwargs['batch_data_samples'] = data_samples
        kwargs = {k: v for k, v in kwargs.items() if k in names}
        decoder_inputs, _ = teacher.pre_decoder(**kwargs)
        points = decoder_inputs['reference_points'][:, :self.num_teacher]
        if points.shape[-1] == 2:
            # One-stage Deformable DETR: learned points; only the centres
            # are read by a one-stage decoder.
            points = torch.cat([points, torch.full_like(points, 0.1)], -1)
        return points

    # -- steps ------------------------------------------------------------
    def teacher_step(self, teacher: nn.Module, feats: Sequence[Tensor],
                     data_samples: Optional[list]) -> None:
        """Sample this step's group and decode it on the teacher (the
        caller holds no_grad and the teacher's form)."""
        if data_samples is None:
            # A probe of the teacher's form (features only): the group
            # needs the batch's image shapes.
            return
        image_inputs, encoder_outputs = encode(teacher, feats, data_samples)
        memory = image_inputs['memory']
        batch = memory.shape[0]
        parts = []
        if self.num_teacher:
            parts.append(
                self._from_teacher(teacher, image_inputs, encoder_outputs,
                                   data_samples, batch).float())
        if self.num_random:
            parts.append(
                self._random(teacher, batch,
                             memory.new_zeros((), dtype=torch.float32)))
        self.points = torch.cat(parts, 1).detach()
        logits = decode(teacher, self.teacher_kind, image_inputs, self.points,
                        self.teacher_layers)
        self.decoded['teacher'] += 1
        if self.teacher_records.active:
            self.teacher_records.records.extend(logits)

    def student_step(self, student: nn.Module) -> None:
        """Decode the group on the student's own encoding of this step.

        Raises:
            RuntimeError: The student's decoder did not run in this step, or
                the teacher's group was not sampled.
        """
        inputs = self.capture.inputs
        if inputs is None:
            raise RuntimeError(
                'shared distillation queries: the student never called '
                'forward_decoder in this step')
        if self.points is None:
            raise RuntimeError('shared distillation queries: the teacher '
                               'has not sampled this step\'s group')
        device = inputs['memory'].device
        points = self.points.to(device)
        # Dropout in the group's decode must not move the global RNG that
        # the student's next step draws from.
        devices = [device] if device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            logits = decode(student, self.student_kind, inputs, points,
                            self.student_layers)
        self.decoded['student'] += 1
        self.points = None
        if self.student_records.active:
            self.student_records.records.extend(logits)

    def row_weight(self, teacher_logits: Tensor,
                   activation: str) -> Optional[Tensor]:
        """The teacher's foreground score per row, or None."""
        if not self.fg_weight:
            return None
        logits = teacher_logits.detach().float()
        if activation == 'sigmoid':
            return logits.sigmoid().max(-1)[0]
        # DETR's softmax: the no-object class is the last column.
        return 1 - logits.softmax(-1)[:, -1]


def _cls_out(model: nn.Module) -> int:
    head = model.bbox_head
    branch = head.cls_branches[0] if hasattr(head,
                                             'cls_branches') else head.fc_cls
    return branch.out_features


class QueryDistillTerm(DistillTerm):
    """A distillation term on the class logits of a DETR-family head,
    through shared distillation queries (see :class:`QueryGroup`).

    Args:
        queries (dict): :class:`QueryGroup` options over
            :data:`QUERY_DEFAULTS` (``num_random``, ``num_teacher``,
            ``layers``, ``fg_weight``, ``seed``).
        **kwargs: :class:`~mmdist.distillers.DistillTerm` arguments; the
            module paths name the heads (``bbox_head``).

    Each distilled decoder layer gives one level of ``(B*Q, C)`` rows.
    """

    def __init__(self, queries: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        unknown = set(queries or {}) - set(QUERY_DEFAULTS)
        if unknown:
            raise ValueError(f'queries: unknown options {sorted(unknown)}; '
                             f'known: {sorted(QUERY_DEFAULTS)}')
        self.query_options = dict(queries or {})
        self.query_cfg = {**QUERY_DEFAULTS, **self.query_options}
        self.group: Optional[QueryGroup] = None
        self._weights: List[Optional[Tensor]] = []

    def attach(self, student: nn.Module,
               teacher: nn.Module) -> List[GroupRecords]:
        """Build the group and its records (no hooks: the group fills
        them)."""
        for side, model, path in (('student', student, self.student_module),
                                  ('teacher', teacher, self.teacher_module)):
            head = getattr(model, path.split('.')[0], None)
            family = family_of(head) if head is not None else None
            if family is None or not family.queries:
                raise ValueError(
                    f'distillation term {self.name!r}: queries=... is for '
                    'DETR-family heads (shared distillation queries), but '
                    f'{side} {path} is '
                    f'{type(head).__name__ if head is not None else "absent"}')
        if _is_mask_head(get_module(student, self.student_module, 'student')):
            self.group = self._mask_group(student, teacher)
        else:
            self.group = QueryGroup(
                student,
                teacher,
                mapped_classes=self.class_mapping is not None,
                **self.query_cfg)
        self.student_outputs = self.group.student_records
        self.teacher_outputs = self.group.teacher_records
        return [self.student_outputs, self.teacher_outputs]

    def _mask_group(self, student: nn.Module,
                    teacher: nn.Module) -> MaskQueryGroup:
        """The group of a MaskFormer-style head: the teacher's learned
        queries (no sampled boxes, so no ``num_random`` / ``num_teacher`` /
        ``seed``)."""
        unused = sorted(set(self.query_options) - set(MASK_QUERY_DEFAULTS))
        if unused:
            raise ValueError(
                f'distillation term {self.name!r}: queries options {unused} '
                'are for DETR-family heads; a MaskFormer / Mask2Former head '
                "shares the teacher's learned queries and takes "
                f'{sorted(MASK_QUERY_DEFAULTS)}')
        self.query_cfg = {**MASK_QUERY_DEFAULTS, **self.query_options}
        return MaskQueryGroup(
            student,
            teacher,
            self.student_module,
            self.teacher_module,
            mapped_classes=self.class_mapping is not None,
            **self.query_cfg)

    def levels(self) -> Tuple[List[Tensor], List[Tensor]]:
        students, teachers = super().levels()
        activation = getattr(self.loss, 'activation', 'sigmoid')
        # On the student's classes (a mapped teacher: its mapped columns).
        self._weights = [
            self.group.row_weight(self.map_teacher(t), activation)
            for t in teachers
        ]
        return students, teachers

    def row_weight(self, logits: Tensor,
                   data_samples: Optional[list]) -> Optional[Tensor]:
        """The teacher's foreground score of each row of the next level."""
        return self._weights.pop(0) if self._weights else None


def _is_mask_head(head: Optional[nn.Module]) -> bool:
    """A MaskFormer-style head (MMSeg ``decode_head``, MMDet
    ``panoptic_head``): a pixel decoder and a transformer decoder."""
    return head is not None and hasattr(head, 'pixel_decoder') and hasattr(
        head, 'transformer_decoder')


def make_term(cfg: dict) -> DistillTerm:
    """A :class:`QueryDistillTerm` for a term with ``queries``, otherwise a
    :class:`~mmdist.distillers.DistillTerm`."""
    cfg = dict(cfg)
    if 'queries' in cfg:
        return QueryDistillTerm(**cfg)
    return DistillTerm(**cfg)
