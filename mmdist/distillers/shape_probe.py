"""Check every distillation term's shapes at build, by one probe forward.

A term whose student and teacher outputs cannot meet in the loss (a decode
head at 1/4 against one at 1/8, FPN levels of other sizes) would otherwise
fail at the first training step, after the data pipeline and the
optimizer have been set up. :func:`probe_term_shapes` runs both models once,
without autograd, on one small random image drawn from its own generator
(the global RNG, and so the student's initialisation, is untouched), in
eval mode (no BatchNorm statistics move), through ``extract_feat`` and the
heads the terms name, and compares what each term's modules give.

Two-stage box classifier terms are not probed: the teacher scores the
student's own RoIs, so their rows correspond by construction.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmdist.utils import get_module
from .adapters import HeadsForward
from .class_map import mapped_channels
from .families import family_of

# The first size a model runs on (64 suits FPNs, ResNets, MiT; 224 models
# with a fixed input size); also the fast teacher's BatchNorm-folding probe.
PROBE_SIZES = (64, 224)
_FEATURE_MODULES = ('backbone', 'neck')


def resizable(student: Sequence[int], teacher: Sequence[int]) -> bool:
    """``(N, C, H, W)`` on both sides, the same ``N`` and ``C``."""
    return (len(student) == len(teacher) == 4
            and tuple(student[:2]) == tuple(teacher[:2]))


def shape_mismatch(name: str, student_module: str, teacher_module: str,
                   student: Sequence[int], teacher: Sequence[int]) -> str:
    """The error for a term whose two outputs do not meet, with the fix."""
    hint = (' Set resize_teacher=True on this term to resize the teacher '
            'bilinearly.' if resizable(student, teacher) else '')
    return (f'distillation term {name!r}: student {student_module} gives '
            f'{tuple(student)} but teacher {teacher_module} gives '
            f'{tuple(teacher)}.{hint}')


def _size(shape: Sequence[int], image: int) -> str:
    """``16x16 (1/4)``: a logits map's size and its stride."""
    stride = f' (1/{image // shape[2]})' if image % shape[2] == 0 else ''
    return f'{shape[2]}x{shape[3]}{stride}'


def _owning_rows(model: nn.Module, path: str) -> Optional[str]:
    """Row layout of the innermost listed head on ``path`` (``'pixel'``
    for segmentation decode heads), or None."""
    rows, module = None, model
    for part in path.split('.'):
        module = getattr(module, part, None)
        if module is None:
            break
        family = family_of(module)
        if family is not None:
            rows = family.rows
    return rows


def _probed(term: dict) -> bool:
    if 'queries' in term:
        return False  # DETR family: rows are shared queries, by construction
    return not any(term[key].startswith('roi_head')
                   for key in ('student_module', 'teacher_module'))


class _Outputs:
    """Forward hooks recording the outputs of some modules of a model."""

    def __init__(self, model: nn.Module, paths: Sequence[str],
                 owner: str) -> None:
        self.records: Dict[str, list] = {path: [] for path in paths}
        self.handles = [
            get_module(model, path, owner).register_forward_hook(
                lambda _m, _a, out, path=path: self.records[path].append(out))
            for path in self.records
        ]

    def clear(self) -> None:
        for records in self.records.values():
            records.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _run(model: nn.Module, paths: Sequence[str], owner: str,
         image: Tensor) -> None:
    heads = [p for p in paths if p.split('.')[0] not in _FEATURE_MODULES]
    feats = model.extract_feat(image)
    HeadsForward(model, heads, owner)(feats)


def _levels(records: list, max_calls: Optional[int]) -> List[Tensor]:
    """Outputs as loss levels, the way :class:`DistillTerm` pairs them."""
    if max_calls is not None:
        records = records[:max_calls]
    levels = []
    for output in records:
        items = output if isinstance(output, (tuple, list)) else [output]
        levels += [item for item in items if isinstance(item, Tensor)]
    return levels


def _forward_both(student: nn.Module, teacher: nn.Module, s_out: _Outputs,
                  t_out: _Outputs) -> Tuple[int, str]:
    """Run both models on the first probe size they accept.

    Returns:
        tuple[int, str]: The size used (0 if none worked) and the last
        failure.
    """
    failure = ''
    for size in PROBE_SIZES:
        image = torch.randn(
            1, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            _run(student, list(s_out.records), 'student', image)
            _run(teacher, list(t_out.records), 'teacher', image)
            return size, ''
        except Exception as error:  # a model that needs another input size
            failure = f'{type(error).__name__}: {error}'
            s_out.clear()
            t_out.clear()
    return 0, failure


def probe_term_shapes(terms: List[dict], student: nn.Module,
                      teacher: nn.Module, short: Sequence[bool]) -> List[str]:
    """Check each term's student and teacher output shapes, in place.

    A short-form term on segmentation decode heads whose logits differ only
    in height and width (heads at different strides) gets
    ``resize_teacher=True``, with a note saying so; any other mismatch
    raises the error the first step would give.

    Args:
        terms (list[dict]): Explicit term configs; ``resize_teacher`` may be
            set on them.
        student (nn.Module): The student.
        teacher (nn.Module): The teacher (eval mode).
        short (Sequence[bool]): Per term, whether the short form wrote it
            (only those are changed).

    Returns:
        list[str]: Notes for the log (terms set to resize, a skipped check).

    Raises:
        ValueError: A term's shapes do not meet, naming both modules and
            shapes.
    """
    probed = [i for i, term in enumerate(terms) if _probed(term)]
    if not probed:
        return []
    s_out = _Outputs(student,
                     dict.fromkeys(terms[i]['student_module'] for i in probed),
                     'student')
    t_out = _Outputs(teacher,
                     dict.fromkeys(terms[i]['teacher_module'] for i in probed),
                     'teacher')
    modes = {m: m.training for m in (*student.modules(), *teacher.modules())}
    try:
        student.eval()
        teacher.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            size, failure = _forward_both(student, teacher, s_out, t_out)
    finally:
        s_out.remove()
        t_out.remove()
        for module, mode in modes.items():
            module.training = mode
    if not size:
        return [
            f'shapes not checked at build: the probe forward failed at '
            f'sizes {PROBE_SIZES} ({failure})'
        ]
    notes = []
    for i in probed:
        notes += _check(terms[i], i < len(short) and short[i], student, s_out,
                        t_out, size)
    return notes


def _check(term: dict, short: bool, student: nn.Module, s_out: _Outputs,
           t_out: _Outputs, size: int) -> List[str]:
    s_path, t_path = term['student_module'], term['teacher_module']
    name = term.get('name') or str(term['loss'].get('type', ''))
    students = _levels(s_out.records[s_path], term.get('max_calls'))
    teachers = _levels(t_out.records[t_path], term.get('max_calls'))
    for s, t in zip(students, teachers):
        s_shape, t_shape = list(s.shape), list(t.shape)
        if term.get('connector') and len(s_shape) > 1:
            s_shape[1] = t_shape[1]  # the connector maps the channels
        if term.get('teacher_columns') and len(t_shape) > 1:
            # A teacher of another label set: its mapped class columns.
            t_shape[1] = mapped_channels(term['teacher_columns'], t_shape[1])
        if s_shape == t_shape or (term.get('resize_teacher')
                                  and resizable(s_shape, t_shape)):
            continue
        if short and resizable(s_shape, t_shape) and _owning_rows(
                student, s_path) == 'pixel':
            term['resize_teacher'] = True
            return [
                f'{name}: teacher {t_path} gives {_size(t_shape, size)} '
                f'logits, student {s_path} {_size(s_shape, size)} (probe '
                f'image {size}x{size}): resize_teacher=True (bilinear, to the '
                "student's size)"
            ]
        raise ValueError(
            shape_mismatch(name, s_path, t_path, s_shape, t_shape) +
            f' (found at build, by a probe forward of both models on a '
            f'{size}x{size} image)')
    return []
