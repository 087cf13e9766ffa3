"""Expand short distillation terms into the explicit terms a head family
needs, and check every term against the head-family table.

A *short* term names a head slot, or nothing::

    dict(head='bbox_head', loss=dict(type='mmdist.DISTLoss'))
    dict(loss=dict(type='mmdist.DISTLoss'))          # every class head

and becomes one explicit term per logits module of that head, per FPN level
where the head has one module per level, per cascade stage and per
auxiliary head, with the activation the head is trained with, the row
layout (``num_classes``) and the names ``dist``, ``dist_l0``, ``dist_s1``,
``dist_aux0``... (see :mod:`mmdist.distillers.families`). Keys the user set
in the loss win over the filled ones. An *explicit* term
(``student_module`` / ``teacher_module``) is kept as written, except that a
path naming a ``ModuleList`` becomes one term per element.

Every term, short or explicit, is refused when a module on its path is a
head whose outputs do not correspond row by row (query heads).
"""
import copy
import inspect
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from torch import nn

from mmdist.registry import MODELS
from mmdist.utils import get_module
from .class_map import ClassNames, map_term_classes
from .families import (INSTEAD, QUERY_TERM, SLOT_NAMES, SLOTS, HeadFamily,
                       Slot, family_of, head_activation)
from .shape_probe import probe_term_shapes

_LOSS_NAMES = {'DISTLoss': 'dist', 'KDLoss': 'kd'}
_TERM_KEYS = ('student_module', 'teacher_module')


@dataclass
class LogitsSite:
    """One module holding class logits, found through the family table.

    Args:
        path (str): Dotted path in the model.
        family (HeadFamily): Family of the head that owns it.
        activation (str): ``'sigmoid'`` or ``'softmax'``.
        rows (str): Row layout (see :class:`HeadFamily`).
        num_classes (int, optional): Columns per row of anchor-major logits.
        suffix (str): Name suffix of the term it gives.
        max_calls (int, optional): Calls per step that count.
        key (tuple): Where it sits: (head index, stage, logits index,
            level); pairs student and teacher sites.
        head (str): Path of the head that owns it (its ``num_classes``).
    """

    path: str
    family: HeadFamily
    activation: str
    rows: str
    num_classes: Optional[int]
    suffix: str
    max_calls: Optional[int] = None
    key: Tuple = field(default_factory=tuple)
    head: str = ''


def refusal(model: nn.Module,
            path: str,
            owner: str,
            queries: bool = False) -> Optional[str]:
    """The error for a path that runs through a refused head, or None.

    Args:
        model (nn.Module): Student or teacher.
        path (str): A term's module path in it.
        owner (str): ``'student'`` or ``'teacher'``, for the message.

    Returns:
        str | None: The sentence naming the head type, why its outputs do
        not correspond row by row and what is supported instead.
    """
    parts = path.split('.')
    module = model
    for depth, part in enumerate(parts):
        module = _resolve(module, part)
        if module is None:
            return None
        family = family_of(module)
        if family is not None and family.queries and not queries:
            # A DETR-family head: only shared distillation queries pair rows.
            return (f'{owner} {".".join(parts[:depth + 1])} is a '
                    f'{type(module).__name__} ({family.name}): '
                    f'{QUERY_TERM}; or {INSTEAD}.')
        if family is not None and family.refused:
            where = '.'.join(parts[:depth + 1])
            return (f'{owner} {where} is a {type(module).__name__} '
                    f'({family.name}), which mmdist does not distil on its '
                    f'outputs: {family.refused}. Supported instead: '
                    f'{INSTEAD}.')
    return None


def _resolve(model: nn.Module, path: str) -> Optional[nn.Module]:
    """The module at ``path`` (``-1`` indexes the last element), or None."""
    module = model
    for part in path.split('.') if path else []:
        indexed = isinstance(module, (nn.ModuleList, nn.Sequential))
        if indexed and part.lstrip('-').isdigit():
            index = int(part)
            if not -len(module) <= index < len(module):
                return None
            module = module[index]
        else:
            module = getattr(module, part, None)
            if not isinstance(module, nn.Module):
                return None
    return module


def _canonical(model: nn.Module, path: str) -> str:
    """``path`` with negative indices replaced by their positions."""
    parts, module = [], model
    for part in path.split('.'):
        indexed = isinstance(module, (nn.ModuleList, nn.Sequential))
        if indexed and part.lstrip('-').isdigit():
            index = int(part) % len(module)
            module = module[index]
            parts.append(str(index))
        else:
            module = getattr(module, part)
            parts.append(part)
    return '.'.join(parts)


def _num_classes(head: nn.Module) -> Optional[int]:
    for name in ('cls_out_channels', 'num_classes'):
        value = getattr(head, name, None)
        if isinstance(value, int):
            return value
    return None


def _head_sites(model: nn.Module, head: nn.Module, path: str,
                owner: str) -> List[LogitsSite]:
    """The logits sites of one head (no sub-heads), keyed by
    (logits index, level)."""
    family = family_of(head)
    activation = head_activation(head, family)
    num_classes = _num_classes(head) if family.rows == 'anchor' else None
    sites = []
    for index, logits in enumerate(family.logits):
        optional = logits.endswith('?')
        logits = logits.rstrip('?')
        module = _resolve(head, logits)
        if module is None:
            if optional:
                continue
            raise KeyError(
                f'{owner} {path} is a {type(head).__name__}, listed in the '
                f'{family.name!r} head family with class logits in '
                f'{logits!r}, but it has no such module; name the module '
                'with student_module/teacher_module')
        full = _canonical(model, f'{path}.{logits}' if logits else path)
        suffix = '' if index == 0 else '_' + logits.split('.')[-1]
        if isinstance(module, nn.ModuleList):
            for level in range(len(module)):
                sites.append(
                    LogitsSite(
                        f'{full}.{level}',
                        family,
                        activation,
                        family.rows,
                        num_classes,
                        f'{suffix}_l{level}',
                        key=(index, level),
                        head=path))
        else:
            sites.append(
                LogitsSite(
                    full,
                    family,
                    activation,
                    family.rows,
                    num_classes,
                    suffix,
                    key=(index, None),
                    head=path))
    return sites


def slot_sites(model: nn.Module, slot: Slot,
               owner: str) -> Tuple[List[List[List[LogitsSite]]], List[str]]:
    """The logits sites of one slot of a model.

    Returns:
        tuple: ``heads[h][stage] -> sites`` (several heads for a list of
        auxiliary heads, several stages for a cascade), and log lines
        saying which heads were left out and why.

    Raises:
        ValueError: A head of the slot is refused (query heads).
        KeyError: A head has no family entry.
    """
    top = getattr(model, slot.name, None)
    if not isinstance(top, nn.Module):
        return [], []
    notes: List[str] = []
    as_list = isinstance(top, nn.ModuleList)
    if as_list and slot.name != 'decode_head':
        heads = [(f'{slot.name}.{i}', m) for i, m in enumerate(top)]
    else:
        heads = [(slot.name, top)]
    out: List[List[List[LogitsSite]]] = []
    for h, (path, head) in enumerate(heads):
        # decode_head as a list is a cascade: its elements are stages.
        if isinstance(head, nn.ModuleList):
            stages = [(f'{path}.{i}', m) for i, m in enumerate(head)]
        else:
            stages = [(path, head)]
        found: List[List[LogitsSite]] = []
        last = len(stages) - 1
        for s, (stage_path, stage) in enumerate(stages):
            family = family_of(stage)
            if family is None:
                raise KeyError(
                    f'{owner} {stage_path} is a {type(stage).__name__}, '
                    'which no head family in mmdist.distillers.families '
                    'lists; name its class-logits module with '
                    'student_module/teacher_module, or add an entry')
            if family.refused:
                if len(stages) > 1 and s > 0:
                    notes.append(f'{owner} {stage_path} '
                                 f'({type(stage).__name__}) left out: '
                                 f'{family.refused}')
                    continue
                raise ValueError(refusal(model, stage_path, owner))
            if family.skipped:
                notes.append(f'{owner} {stage_path} ({type(stage).__name__})'
                             f' left out: {family.skipped}')
                continue
            if family.inner:
                inner = getattr(stage, family.inner)
                boxes = ([(f'{stage_path}.{family.inner}.{i}', m)
                          for i, m in enumerate(inner)] if isinstance(
                              inner, nn.ModuleList) else
                         [(f'{stage_path}.{family.inner}', inner)])
                for box_path, box in boxes:
                    if family_of(box) is None:
                        raise KeyError(
                            f'{owner} {box_path} is a {type(box).__name__}, '
                            'which no head family lists; name its logits '
                            'module with student_module/teacher_module')
                    found.append(_head_sites(model, box, box_path, owner))
            else:
                found.append(_head_sites(model, stage, stage_path, owner))
                if s < last:
                    # A cascade calls every stage but the last again, to
                    # feed the next stage: the first call of a step is the
                    # one its own loss trains.
                    for site in found[-1]:
                        site.max_calls = 1
        if found:
            out.append(found)
    return out, notes


def _stage_pairs(n_student: int, n_teacher: int,
                 slot: Slot) -> List[Tuple[int, int]]:
    if n_student == n_teacher:
        return [(i, i) for i in range(n_student)]
    if slot.name == 'roi_head':
        return [(0, 0)]  # the student's first-stage RoIs, as the authors
    return [(n_student - 1, n_teacher - 1)]  # the final predictions


def _check_rows(s: LogitsSite, t: LogitsSite, student: nn.Module,
                teacher: nn.Module) -> None:
    where = f'student {s.path} ({s.family.name}) and teacher {t.path} ' \
            f'({t.family.name})'
    if s.rows != t.rows:
        raise ValueError(f'{where} do not correspond row by row: their rows '
                         f'are {s.rows}s and {t.rows}s')
    if s.activation != t.activation:
        raise ValueError(
            f'{where} are trained with {s.activation} and {t.activation}: '
            'their probabilities are not comparable; name the modules with '
            'student_module/teacher_module and choose the activation')
    if s.rows == 'anchor' and s.num_classes != t.num_classes:
        return  # other classes: mapped (and anchors checked) by class_map
    out_s = _out_channels(_resolve(student, s.path))
    out_t = _out_channels(_resolve(teacher, t.path))
    if out_s is not None and out_t is not None and out_s != out_t and (
            s.rows == 'anchor'):
        # Pixel and instance rows with other classes: see class_map.
        raise ValueError(f'{where} give {out_s} and {out_t} channels per '
                         'position: different anchors per position')


def _out_channels(module: Optional[nn.Module]) -> Optional[int]:
    for name in ('out_channels', 'out_features'):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    return None


def _loss_for(loss: dict, site: LogitsSite, weight: float) -> dict:
    loss = copy.deepcopy(dict(loss))
    loss_cls = MODELS.get(loss.get('type', ''))
    params = (
        inspect.signature(loss_cls).parameters if loss_cls is not None else {})
    if 'activation' in params:
        loss.setdefault('activation', site.activation)
    if 'num_classes' in params and site.rows == 'anchor':
        loss.setdefault('num_classes', site.num_classes)
    if weight != 1.0:
        loss['loss_weight'] = loss.get('loss_weight', 1.0) * weight
    return loss


def expand_short(term: dict, student: nn.Module,
                 teacher: nn.Module) -> Tuple[List[dict], List[str]]:
    """Expand one short term (``head`` or no module at all).

    Args:
        term (dict): ``head`` (a slot name, optional), ``loss`` (defaults
            to ``dict(type='mmdist.DISTLoss')``), ``name`` and any
            :class:`~mmdist.distillers.DistillTerm` option, copied to every
            term.
        student (nn.Module): The student.
        teacher (nn.Module): The teacher.

    Returns:
        tuple[list[dict], list[str]]: Explicit term configs and log notes.
    """
    term = dict(term)
    head = term.pop('head', None)
    loss = term.pop('loss', None) or dict(type='mmdist.DISTLoss')
    loss_type = str(loss.get('type', '')).split('.')[-1]
    base = term.pop('name', None) or _LOSS_NAMES.get(loss_type,
                                                     loss_type.lower())
    if head is not None and head not in SLOT_NAMES:
        raise ValueError(f'short distillation term: head={head!r} is not one '
                         f'of {SLOT_NAMES}; name modules with '
                         'student_module/teacher_module instead')
    slots = [s for s in SLOTS if head is None or s.name == head]
    terms: List[dict] = []
    notes: List[str] = []
    for slot in slots:
        s_heads, s_notes = slot_sites(student, slot, 'student')
        t_heads, t_notes = slot_sites(teacher, slot, 'teacher')
        notes += s_notes + t_notes
        if not s_heads and not t_heads:
            if head is not None:
                raise ValueError(f'short distillation term head={head!r}: '
                                 'neither model has class logits there')
            continue
        if len(s_heads) != len(t_heads):
            message = (f'{slot.name}: the student has {len(s_heads)} class '
                       f'head(s) there and the teacher {len(t_heads)}, so '
                       'they do not pair up')
            if head is not None:
                raise ValueError(f'short distillation term: {message}; name '
                                 'the pairs with student_module/'
                                 'teacher_module')
            notes.append(f'{message}: left out')
            continue
        for h, (s_stages, t_stages) in enumerate(zip(s_heads, t_heads)):
            head_suffix = slot.suffix + (str(h) if len(s_heads) > 1 else '')
            for i, j in _stage_pairs(len(s_stages), len(t_stages), slot):
                stage_suffix = f'_s{i}' if len(s_stages) > 1 else ''
                terms += _pair_stage(s_stages[i], t_stages[j], student,
                                     teacher, slot, loss, term,
                                     base + head_suffix + stage_suffix, notes)
    if not terms:
        raise ValueError('the short distillation term found no class logits '
                         'to distil in the student and teacher '
                         f'({"; ".join(notes) or "no head slots"})')
    return terms, notes


def _pair_stage(s_sites: List[LogitsSite],
                t_sites: List[LogitsSite],
                student: nn.Module,
                teacher: nn.Module,
                slot: Slot,
                loss: dict,
                options: dict,
                name: str,
                notes: Optional[List[str]] = None) -> List[dict]:
    s_by_index: Dict[int, List[LogitsSite]] = {}
    t_by_index: Dict[int, List[LogitsSite]] = {}
    for site in s_sites:
        s_by_index.setdefault(site.key[0], []).append(site)
    for site in t_sites:
        t_by_index.setdefault(site.key[0], []).append(site)
    if notes is not None:
        notes += _unpaired_notes(s_by_index, t_by_index)
    terms = []
    for index in sorted(set(s_by_index) & set(t_by_index)):
        s_levels, t_levels = s_by_index[index], t_by_index[index]
        if len(s_levels) != len(t_levels):
            raise ValueError(
                f'student {s_levels[0].path.rsplit(".", 1)[0]} '
                f'({s_levels[0].family.name}) and teacher '
                f'{t_levels[0].path.rsplit(".", 1)[0]} '
                f'({t_levels[0].family.name}) organise their levels '
                f'differently ({len(s_levels)} vs {len(t_levels)} modules): '
                'the rows of each level cannot be paired')
        for s, t in zip(s_levels, t_levels):
            _check_rows(s, t, student, teacher)
            entry = dict(
                student_module=s.path,
                teacher_module=t.path,
                loss=_loss_for(loss, s, slot.weight),
                name=name + s.suffix)
            if s.max_calls or t.max_calls:
                entry['max_calls'] = s.max_calls or t.max_calls
            if s.family.queries:
                entry['queries'] = {}  # QueryDistillTerm's defaults
            entry.update(copy.deepcopy(options))
            terms.append(entry)
    return terms


def _unpaired_notes(s_by_index: Dict[int, List[LogitsSite]],
                    t_by_index: Dict[int, List[LogitsSite]]) -> List[str]:
    """Log lines for the logits modules of one side that the other side's
    head has no counterpart for (a distilled DeiT's ``head_dist`` beside a
    one-head student), which the short form leaves out."""
    notes = []
    sides = (('student', s_by_index, t_by_index, 'teacher'),
             ('teacher', t_by_index, s_by_index, 'student'))
    for owner, own, other, partner in sides:
        if not other:
            continue
        family = next(iter(other.values()))[0].family.name
        for index in sorted(set(own) - set(other)):
            for site in own[index]:
                notes.append(
                    f'{owner} {site.path} ({site.family.name}) left out: '
                    f"the {partner}'s {family} head has no logits module "
                    'to pair it with')
    return notes


def expand_explicit(term: dict, student: nn.Module,
                    teacher: nn.Module) -> List[dict]:
    """An explicit term, or one per element when both paths name equally
    long ``ModuleList`` containers (one conv per level).

    Raises:
        ValueError: One side is a container and the other is not, or their
            lengths differ; the message names the elements.
    """
    s_mod = get_module(student, term['student_module'], 'student')
    t_mod = get_module(teacher, term['teacher_module'], 'teacher')
    s_list = isinstance(s_mod, nn.ModuleList)
    t_list = isinstance(t_mod, nn.ModuleList)
    if not s_list and not t_list:
        return [dict(term)]
    if s_list and t_list and len(s_mod) == len(t_mod):
        base = term.get('name')
        out = []
        for i in range(len(s_mod)):
            entry = copy.deepcopy(dict(term))
            entry['student_module'] = f'{term["student_module"]}.{i}'
            entry['teacher_module'] = f'{term["teacher_module"]}.{i}'
            if base:
                entry['name'] = f'{base}_l{i}'
            else:
                loss_type = str(term['loss'].get('type', '')).split('.')[-1]
                entry['name'] = _LOSS_NAMES.get(loss_type,
                                                loss_type.lower()) + f'_l{i}'
            out.append(entry)
        return out

    def elements(side, path, module):
        if not isinstance(module, nn.ModuleList):
            return f'{side} {path} is a single {type(module).__name__}'
        names = ', '.join(f'{path}.{i}' for i in range(len(module)))
        return (f'{side} {path} is a ModuleList that the model indexes, '
                f'never calls: use its elements {names}')

    raise ValueError('distillation term: ' +
                     elements('student', term['student_module'], s_mod) +
                     '; ' +
                     elements('teacher', term['teacher_module'], t_mod) +
                     ' (one term per element, or the short form '
                     "dict(head=..., loss=...) which pairs them)")


def expand_terms(terms: Optional[Sequence[dict]],
                 student: nn.Module,
                 teacher: nn.Module,
                 log: bool = True,
                 notes: Optional[List[str]] = None,
                 probe: bool = True,
                 class_names: Optional[ClassNames] = None) -> List[dict]:
    """All terms of a distiller as explicit term configs, logged, and
    their shapes checked by one probe forward of both models (see
    :mod:`~mmdist.distillers.shape_probe`).

    Args:
        terms (list[dict] | None): The distiller's ``distill_terms``;
            ``None`` distils every class head with ``DISTLoss`` (the short
            form with no head).
        student (nn.Module): The student.
        teacher (nn.Module): The teacher.
        log (bool): Log the expansion (as pasteable config) and what the
            short form left out. Defaults to True.
        notes (list, optional): Receives what the short form left out and
            why, and what the probe set or could not check (one line each).
        probe (bool): Run the probe forward. Defaults to True.
        class_names (ClassNames, optional): The two models' class names,
            for terms whose heads predict other classes (see
            :mod:`~mmdist.distillers.class_map`).

    Returns:
        list[dict]: :class:`~mmdist.distillers.DistillTerm` configs.

    Raises:
        ValueError: A term names a refused head (query heads), a short term
            whose student and teacher rows do not correspond, a container
            path that cannot be expanded, or a term whose two outputs have
            shapes that cannot meet in its loss.
    """
    if terms is None:
        terms = [dict(loss=dict(type='mmdist.DISTLoss'))]
    out: List[dict] = []
    short: List[bool] = []
    expanded_any = False
    for term in terms:
        term = dict(term)
        explicit = [k for k in _TERM_KEYS if k in term]
        if explicit and 'head' in term:
            raise ValueError('a distillation term takes either head=... (the '
                             'short form) or student_module/teacher_module, '
                             f'not both: {term}')
        if explicit:
            if len(explicit) == 1:
                raise ValueError(f'distillation term {term} names only '
                                 f'{explicit[0]}; give both modules or use '
                                 'the short form head=...')
            for side, model in (('student', student), ('teacher', teacher)):
                error = refusal(model, term[f'{side}_module'], side, 'queries'
                                in term)
                if error:
                    raise ValueError(error)
            explicit_terms = expand_explicit(term, student, teacher)
            expanded_any |= len(explicit_terms) > 1
            out += explicit_terms
            short += [False] * len(explicit_terms)
            continue
        expanded, short_notes = expand_short(term, student, teacher)
        for note in short_notes if log else ():
            print_log(f'distill terms: {note}', logger='current')
        if notes is not None:
            notes += short_notes
        out += expanded
        short += [True] * len(expanded)
        expanded_any = True
    class_notes = map_term_classes(out, student, teacher, class_names)
    for note in class_notes if log else ():
        print_log(f'distill terms: {note}', logger='current')
    if notes is not None:
        notes += class_notes
    expanded_any |= bool(class_notes)
    probe_notes = probe_term_shapes(out, student, teacher,
                                    short) if (probe) else []
    for note in probe_notes if log else ():
        print_log(f'distill terms: {note}', logger='current')
    if notes is not None:
        notes += probe_notes
    if expanded_any and log:
        print_log(
            'distill terms, expanded:\n' + format_terms(out), logger='current')
    return out


def format_terms(terms: Sequence[dict]) -> str:
    """``distill_terms=[...]`` as pasteable config text."""
    lines = ['distill_terms=[']
    for term in terms:
        items = ', '.join(f'{k}={_fmt(v)}' for k, v in term.items())
        lines.append(f'    dict({items}),')
    lines.append(']')
    return '\n'.join(lines)


def _fmt(value) -> str:
    if isinstance(value, dict):
        return 'dict(' + ', '.join(f'{k}={_fmt(v)}'
                                   for k, v in value.items()) + ')'
    return repr(value)
