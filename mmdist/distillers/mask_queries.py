"""Shared queries for MaskFormer and Mask2Former heads.

Each MaskFormer-style head matches its own learned queries to the
ground-truth masks, so query ``i`` of the student and query ``i`` of the
teacher describe different segments. Here the teacher's learned queries
(``query_feat`` and ``query_embed`` for Mask2Former, ``query_embed`` for
MaskFormer) are the shared group: the teacher decodes them as it always
does, and the student's transformer decoder decodes them too, in a separate
call of the student head's own ``forward`` on the pixel decoder outputs of
its stock step (so the group never enters the attention of the student's
own queries, and masked attention uses the group's own mask predictions, as
the decoder does for its queries). Rows are (image, query) over the classes
and "no object", and correspond by construction.

The same head classes serve MMSegmentation's ``decode_head`` and
MMDetection's ``panoptic_head``.
"""
import contextlib
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from mmdist.utils import get_module
from .recorder import GroupRecords

#: Term option ``queries`` for these heads (see :class:`MaskQueryGroup`).
MASK_QUERY_DEFAULTS = dict(layers='last', fg_weight=False)
#: What a refusal of two class counts adds: how to map other label sets.
CLASS_HINT = ('; a teacher of another label set needs its class names (the '
              "configs' metainfo.classes, or the distiller's student_classes "
              '/ teacher_classes) or a class_map on the term')
#: The query modules of a MaskFormer-style head (those it has).
QUERY_MODULES = ('query_feat', 'query_embed')


def _query_modules(head: nn.Module) -> Dict[str, nn.Embedding]:
    return {
        name: head._modules[name]
        for name in QUERY_MODULES
        if isinstance(head._modules.get(name), nn.Embedding)
    }


def _decoder_layers(head: nn.Module) -> int:
    """Class predictions per forward (Mask2Former: one before the first
    layer, then one per layer; MaskFormer: one per layer)."""
    decoder = head.transformer_decoder
    layers = getattr(decoder, 'num_layers', None) or len(decoder.layers)
    return layers + int(hasattr(head, 'num_transformer_decoder_layers'))


def pick_layers(count: int, layers, owner: str) -> List[int]:
    """Indices of the predictions a shared-query term distils.

    Args:
        count (int): Predictions the model's decoder gives.
        layers (str | int | list[int]): ``'last'``, ``'all'``, an index or
            a list of indices.
        owner (str): ``'student'`` or ``'teacher'``, for errors.

    Returns:
        list[int]: Non-negative indices.
    """
    if layers == 'last':
        return [count - 1]
    if layers == 'all':
        return list(range(count))
    picked = [layers] if isinstance(layers, int) else list(layers)
    for layer in picked:
        if not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(f'queries: layer {layer!r} is not one of the '
                             f"{owner}'s {count} decoder predictions")
    return [layer % count for layer in picked]


class _StudentCapture:
    """Hooks keeping the inputs of the student head's own call and its
    pixel decoder's output (with their graphs) while capturing is on."""

    def __init__(self, head: nn.Module) -> None:
        self.active = False
        self.args: Optional[tuple] = None
        self.pixels = None
        head.register_forward_pre_hook(self._on_head)
        head.pixel_decoder.register_forward_hook(self._on_pixels)

    def _on_head(self, module: nn.Module, args: tuple) -> None:
        if self.active and self.args is None:
            self.args = args

    def _on_pixels(self, module: nn.Module, args: tuple, output) -> None:
        if self.active and self.pixels is None:
            self.pixels = output

    def reset(self, active: bool) -> None:
        self.active = active
        self.args = None
        self.pixels = None


def _with_input_shape(data_samples: list) -> list:
    """The samples' metainfo with ``batch_input_shape``, which MMDet's
    MaskFormer head reads; MMSeg's head sets it to ``img_shape`` in its own
    ``loss`` and ``predict`` (the teacher's forward runs neither)."""
    if all('batch_input_shape' in s.metainfo for s in data_samples):
        return data_samples
    return [
        type(sample)(metainfo=dict(
            sample.metainfo, batch_input_shape=sample.metainfo['img_shape']))
        for sample in data_samples
    ]


@contextlib.contextmanager
def _decoding_group(head: nn.Module, pixels, queries: Dict[str, Tensor]):
    """The head with the group's queries and its step's pixel decoder
    output in place of its own, for one call."""
    own = {name: head._modules[name] for name in queries}
    for name, weight in queries.items():
        head._modules[name] = nn.Embedding.from_pretrained(weight)
    head.pixel_decoder.forward = lambda *args, **kwargs: pixels
    try:
        yield
    finally:
        head._modules.update(own)
        del head.pixel_decoder.forward


class MaskQueryGroup:
    """The teacher's learned queries, decoded by both transformer decoders.

    Args:
        student (nn.Module): The student segmentor or detector.
        teacher (nn.Module): The frozen teacher.
        student_path (str): The student's MaskFormer-style head
            (``decode_head``, ``panoptic_head``).
        teacher_path (str): The teacher's.
        layers (str | int | list[int]): Class predictions distilled:
            ``'last'`` (the final one), ``'all'``, an index or a list.
            Defaults to ``'last'``.
        fg_weight (bool): Weight each row by the teacher's probability that
            the query is an object (1 - its "no object" probability).
            Defaults to False (every row counts, as DIST on a classifier).
        mapped_classes (bool): The term maps the teacher's classes onto
            the student's (a teacher of another label set), so the two
            class counts may differ. Defaults to False.
    """

    def __init__(self,
                 student: nn.Module,
                 teacher: nn.Module,
                 student_path: str,
                 teacher_path: str,
                 layers='last',
                 fg_weight: bool = False,
                 mapped_classes: bool = False) -> None:
        s_head = get_module(student, student_path, 'student')
        t_head = get_module(teacher, teacher_path, 'teacher')
        s_queries, t_queries = _query_modules(s_head), _query_modules(t_head)
        if set(s_queries) != set(t_queries):
            raise ValueError(
                f'shared queries: student {student_path} '
                f'({type(s_head).__name__}) takes {sorted(s_queries)} and '
                f'teacher {teacher_path} ({type(t_head).__name__}) '
                f'{sorted(t_queries)}; both must be MaskFormer or both '
                'Mask2Former')
        for name in s_queries:
            s_width = s_queries[name].embedding_dim
            t_width = t_queries[name].embedding_dim
            if s_width != t_width:
                raise ValueError(
                    f'shared queries: the student decoder {student_path} '
                    f'is {s_width} wide ({name}) and the teacher\'s '
                    f'{teacher_path} {t_width}; the teacher\'s queries '
                    'cannot enter the student\'s decoder')
        s_classes = s_head.cls_embed.out_features
        t_classes = t_head.cls_embed.out_features
        if s_classes != t_classes and not mapped_classes:
            raise ValueError(
                f'shared queries: student {student_path} scores '
                f'{s_classes} classes per query (with "no object") and '
                f'teacher {teacher_path} {t_classes}{CLASS_HINT}')
        self.student_path, self.teacher_path = student_path, teacher_path
        self.student_layers = pick_layers(
            _decoder_layers(s_head), layers, 'student')
        self.teacher_layers = pick_layers(
            _decoder_layers(t_head), layers, 'teacher')
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f'queries: layers={layers!r} gives '
                f'{len(self.student_layers)} student and '
                f'{len(self.teacher_layers)} teacher predictions; name as '
                "many of each (e.g. layers='last')")
        self.fg_weight = fg_weight
        self.teacher_queries = t_queries
        self.capture = _StudentCapture(s_head)
        self.student_records = GroupRecords(self.capture)
        self.teacher_records = GroupRecords()
        #: Groups decoded so far by each model (tests and logs read them).
        self.decoded = dict(student=0, teacher=0)

    @staticmethod
    def _rows(scores: Sequence[Tensor], layers: List[int]) -> List[Tensor]:
        # (B, Q, C + 1) per prediction -> (B * Q, C + 1) rows.
        return [scores[i].flatten(0, 1) for i in layers]

    def teacher_step(self, teacher: nn.Module, feats: Sequence[Tensor],
                     data_samples: Optional[list]) -> None:
        """The teacher's head on its features, its own queries being the
        group (the caller holds no_grad and the teacher's form)."""
        if data_samples is None:
            return  # a probe of the teacher's form: features only
        head = get_module(teacher, self.teacher_path, 'teacher')
        scores, _ = head(feats, _with_input_shape(data_samples))
        self.decoded['teacher'] += 1
        if self.teacher_records.active:
            self.teacher_records.records.extend(
                self._rows(scores, self.teacher_layers))

    def student_step(self, student: nn.Module) -> None:
        """Decode the group in the student's head, on its pixel decoder's
        output of this step.

        Raises:
            RuntimeError: The student's head did not run in this step.
        """
        capture = self.capture
        if capture.args is None or capture.pixels is None:
            raise RuntimeError(
                f'shared queries: the student never called '
                f'{self.student_path} and its pixel decoder in this step')
        head = get_module(student, self.student_path, 'student')
        device = capture.args[0][0].device
        queries = {
            name: module.weight.detach().to(device)
            for name, module in self.teacher_queries.items()
        }
        # Dropout in the group's decode must not move the global RNG that
        # the student's next step draws from.
        devices = [device] if device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices), _decoding_group(
                head, capture.pixels, queries):
            scores, _ = type(head).forward(head, *capture.args)
        self.decoded['student'] += 1
        if self.student_records.active:
            self.student_records.records.extend(
                self._rows(scores, self.student_layers))

    def row_weight(self, teacher_logits: Tensor,
                   activation: str) -> Optional[Tensor]:
        """1 - the teacher's "no object" probability per row, or None."""
        if not self.fg_weight:
            return None
        probs = teacher_logits.detach().float().softmax(-1)
        return 1 - probs[:, -1]
