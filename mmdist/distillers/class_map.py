"""A teacher trained on another label set: its class columns mapped onto the
student's classes.

Class names come from, in this order:

- the student: the distiller's ``student_classes``, which
  :func:`fill_student_classes` sets from the distillation config
  (``metainfo.classes``, else the training set's ``metainfo.classes`` or
  its dataset type's ``METAINFO['classes']``, through ``RepeatDataset`` /
  ``ConcatDataset`` / ``ClassBalancedDataset`` wrappers, no annotation
  read);
- the teacher: the distiller's ``teacher_classes``, else the teacher's
  config file read the same way, else its checkpoint's
  ``meta.dataset_meta.classes``.

A term's ``class_map`` (student class -> teacher class, or a list of
teacher classes; names or indices) overrides or completes the match by
name. Names match exactly, then ignoring case, spaces, ``_`` and ``-``
(``diningtable`` and ``dining table``).

How the teacher's mapped columns are computed (:class:`ClassMapping`):

- **sigmoid heads** (independent per-class scores): a student class mapped
  to one teacher class takes its logit as it is. Several teacher classes
  combine with ``max`` (default: the teacher's confidence that the object
  is any of them is at least that of the likeliest; their scores are
  strongly correlated, a car/truck confusion, so summing evidence
  overcounts) or ``noisy_or`` (``1 - prod(1 - p_i)``: the classes treated
  as independent detections). Unmapped teacher classes are dropped: each
  sigmoid is its own binary problem.
- **softmax heads** (one distribution per row): a student class gets the
  sum of the probabilities of its teacher classes (the events are
  disjoint, so this is exact). With a background column (RoI box heads,
  SSD, YOLACT: ``C + 1`` columns, background last) the mass of the
  unmapped teacher classes goes to background: the teacher says "none of
  the student's classes". Without one (classifiers, segmentors) that mass
  is dropped and the rest renormalised: the teacher's distribution given
  that the row is one of the student's classes.

Softmax columns are given to the loss as log-probabilities, so the loss's
temperature acts on them as on logits: for one-to-one maps without
background the result equals the teacher's logits restricted to the mapped
columns at every temperature; sums and background are combined at
temperature 1 first.
"""
import copy
import difflib
import functools
import inspect
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

#: Ways to combine several teacher classes, per activation.
COMBINE = {'softmax': ('sum', ), 'sigmoid': ('max', 'noisy_or')}
DEFAULT_COMBINE = {'softmax': 'sum', 'sigmoid': 'max'}
#: Dataset wrappers: the key holding the wrapped dataset(s).
WRAPPERS = ('dataset', 'datasets')

ClassRef = Union[str, int]


# -- class names -----------------------------------------------------------
def _as_names(classes) -> Optional[List[str]]:
    if isinstance(classes, (list, tuple)) and classes:
        return [str(c) for c in classes]
    return None


def dataset_classes(dataset: Optional[dict],
                    scope: Optional[str] = None) -> Optional[List[str]]:
    """Class names of a dataset config, without building it.

    ``metainfo.classes`` when set, else the ``METAINFO['classes']`` of its
    registered type; a wrapper (``RepeatDataset``, ``ConcatDataset``...)
    is looked through (the first wrapped dataset, as ``ConcatDataset``
    takes its metainfo from it).

    Args:
        dataset (dict, optional): A dataset config.
        scope (str, optional): Registry scope of its type (the config's
            ``default_scope``).

    Returns:
        list[str] | None: The names, or None where unknown.
    """
    if not isinstance(dataset, dict):
        return None
    names = _as_names((dataset.get('metainfo') or {}).get('classes'))
    if names:
        return names
    for key in WRAPPERS:
        inner = dataset.get(key)
        if isinstance(inner, (list, tuple)):
            inner = inner[0] if inner else None
        if isinstance(inner, dict):
            return dataset_classes(inner, scope)
    return _type_classes(dataset.get('type'), scope)


def _type_classes(dataset_type, scope: Optional[str]) -> Optional[List[str]]:
    """``METAINFO['classes']`` of a registered dataset type."""
    if isinstance(dataset_type, type):
        cls = dataset_type
    elif isinstance(dataset_type, str):
        from mmengine.registry import DATASETS
        keys = [dataset_type]
        if scope and '.' not in dataset_type:
            # The scoped key imports the package's registry if need be.
            keys.insert(0, f'{scope}.{dataset_type}')
        cls = None
        for key in keys:
            try:
                cls = DATASETS.get(key)
            except (KeyError, ImportError, AssertionError):
                cls = None
            if cls is not None:
                break
    else:
        return None
    return _as_names(getattr(cls, 'METAINFO', {}).get('classes'))


def config_classes(cfg) -> Optional[List[str]]:
    """Class names a full config trains with.

    The top-level ``metainfo.classes``, else the training set's (then the
    validation and test sets'), see :func:`dataset_classes`.

    Args:
        cfg (Config | dict): A full config.

    Returns:
        list[str] | None: The names, or None where the config has none.
    """
    names = _as_names((cfg.get('metainfo') or {}).get('classes'))
    if names:
        return names
    scope = cfg.get('default_scope')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        names = dataset_classes((cfg.get(loader) or {}).get('dataset'), scope)
        if names:
            return names
    return None


def fill_student_classes(cfg) -> None:
    """Set ``model.student_classes`` of a distillation config from the
    config's data (see :func:`config_classes`), in place, unless set.

    The distiller is built from ``cfg.model`` alone; this is how it learns
    the student's class names.

    Args:
        cfg (Config | dict): A full config.
    """
    model = cfg.get('model')
    if not isinstance(model, dict) or str(model.get(
            'type',
            '')).split('.')[-1] != 'Distiller' or model.get('student_classes'):
        return
    names = config_classes(cfg)
    if names:
        model['student_classes'] = names


@functools.lru_cache(maxsize=32)
def _teacher_config_classes(path: str) -> Optional[Tuple[str, ...]]:
    from mmengine.config import Config
    try:
        if '::' in path:
            path, _ = Config._get_cfg_path(path, '')
        cfg = Config.fromfile(path)
    except Exception:  # unreadable: the teacher's build reports it
        return None
    names = config_classes(cfg)
    return tuple(names) if names else None


def teacher_classes(teacher, model=None) -> Optional[List[str]]:
    """The teacher's class names: its config file's data, else the
    ``dataset_meta`` its checkpoint carried (``model.dataset_meta``).

    Args:
        teacher (str | dict): The teacher's config path or model dict.
        model (nn.Module, optional): The built teacher.

    Returns:
        list[str] | None: The names, or None where unknown.
    """
    if isinstance(teacher, str):
        names = _teacher_config_classes(teacher)
        if names:
            return list(names)
    meta = getattr(model, 'dataset_meta', None)
    if isinstance(meta, dict):
        return _as_names(meta.get('classes'))
    return None


# -- resolving a map -------------------------------------------------------
def _key(name: str) -> str:
    return re.sub(r'[\s_\-]+', '', name.lower())


def closest(name: str, names: Sequence[str], n: int = 3) -> List[str]:
    """The names of ``names`` closest to ``name`` (spelling)."""
    by_key = {_key(c): c for c in names}
    found = difflib.get_close_matches(_key(name), list(by_key), n, 0.5)
    return [by_key[k] for k in found]


def _index(ref: ClassRef, names: Optional[Sequence[str]], count: int,
           side: str, where: str) -> int:
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise ValueError(f'{where}: class_map names a {side} class as '
                         f'{ref!r}; use a class name or an index')
    if isinstance(ref, int):
        if not 0 <= ref < count:
            raise ValueError(f'{where}: class_map {side} class index {ref} '
                             f'is out of range (the {side} has {count} '
                             'classes)')
        return ref
    if names is None:
        raise ValueError(
            f'{where}: class_map names the {side} class {ref!r}, but the '
            f'{side}\'s class names are unknown; ' + _NAMES_HINT[side])
    if ref in names:
        return list(names).index(ref)
    keys = [_key(n) for n in names]
    if _key(ref) in keys:
        return keys.index(_key(ref))
    near = closest(ref, names)
    raise ValueError(f'{where}: class_map names the {side} class {ref!r}, '
                     f'which is not one of its {len(names)} classes'
                     f'{_near(near)}; {side} classes: {list(names)}')


_NAMES_HINT = {
    'student':
    'set student_classes on the distiller, or name it in the '
    "config's metainfo=dict(classes=...) (tools/train.py reads it), or use "
    'class indices',
    'teacher':
    'set teacher_classes on the distiller, or use class indices',
}


def _near(near: List[str]) -> str:
    return f' (closest: {", ".join(near)})' if near else ''


def resolve_columns(
        student_names: Optional[Sequence[str]],
        teacher_names: Optional[Sequence[str]],
        student_count: int,
        teacher_count: int,
        class_map: Optional[dict] = None,
        where: str = 'distillation term') -> Tuple[List[List[int]], List[str]]:
    """The teacher classes of each student class.

    Args:
        student_names (Sequence[str], optional): Student class names.
        teacher_names (Sequence[str], optional): Teacher class names.
        student_count (int): Classes the student head predicts.
        teacher_count (int): Classes the teacher head predicts.
        class_map (dict, optional): Student class -> teacher class or list
            of teacher classes (names or indices); the other student
            classes are matched by name.
        where (str): The term, for messages.

    Returns:
        tuple[list[list[int]], list[str]]: Teacher class indices per student
        class, and one line per student class saying how it was matched.

    Raises:
        ValueError: A student class with no teacher class (naming both
            lists and the closest teacher names), names that are unknown
            where they are needed, or lists of the wrong length.
    """
    for side, names, count in (('student', student_names, student_count),
                               ('teacher', teacher_names, teacher_count)):
        if names is not None and len(names) != count:
            raise ValueError(
                f'{where}: the {side} head predicts {count} classes but its '
                f'class names list {len(names)}: {list(names)}')
    columns: List[Optional[List[int]]] = [None] * student_count
    how: List[str] = [''] * student_count
    for ref, targets in (class_map or {}).items():
        s = _index(ref, student_names, student_count, 'student', where)
        targets = targets if isinstance(targets, (list, tuple)) else [targets]
        if not targets:
            raise ValueError(f'{where}: class_map maps {ref!r} to no '
                             'teacher class')
        columns[s] = [
            _index(t, teacher_names, teacher_count, 'teacher', where)
            for t in targets
        ]
        how[s] = 'class_map'
    missing = [i for i, c in enumerate(columns) if c is None]
    if missing and (student_names is None or teacher_names is None):
        side = 'teacher' if student_names is not None else 'student'
        unmapped = [
            student_names[i] if student_names else str(i) for i in missing
        ]
        raise ValueError(
            f'{where}: student and teacher predict {student_count} and '
            f'{teacher_count} classes, and the {side}\'s class names are '
            f'unknown, so {len(missing)} student classes '
            f'({", ".join(unmapped[:5])}{"..." if len(missing) > 5 else ""})'
            ' cannot be matched by name; give the term a class_map (student '
            'class -> teacher class, names or indices), or ' +
            _NAMES_HINT[side])
    if missing:
        keys = [_key(n) for n in teacher_names]
        unmatched = []
        for i in missing:
            name = student_names[i]
            if name in teacher_names:
                columns[i] = [list(teacher_names).index(name)]
                how[i] = 'name'
            elif _key(name) in keys:
                columns[i] = [keys.index(_key(name))]
                how[i] = 'name, spelled differently'
            else:
                unmatched.append(name)
        if unmatched:
            lines = [
                f'{n!r}{_near(closest(n, teacher_names))}' for n in unmatched
            ]
            raise ValueError(
                f'{where}: {len(unmatched)} student class(es) have no '
                f'teacher class of the same name: {"; ".join(lines)}. Map '
                'them with class_map=dict(<student class>=<teacher class or '
                f'list>). Student classes: {list(student_names)}. Teacher '
                f'classes: {list(teacher_names)}')
    return columns, how


def describe(columns: List[List[int]],
             how: List[str],
             student_names: Optional[Sequence[str]],
             teacher_names: Optional[Sequence[str]],
             teacher_count: int,
             background: bool = False) -> List[str]:
    """Lines saying which teacher classes feed each student class and which
    are dropped, or go to background (for the expansion log and
    ``print_terms.py``)."""

    def s_name(i):
        return student_names[i] if student_names else f'#{i}'

    def t_name(j):
        return teacher_names[j] if teacher_names else f'#{j}'

    lines = []
    for i, (cols, kind) in enumerate(zip(columns, how)):
        if [t_name(j) for j in cols] == [s_name(i)] and kind == 'name':
            continue
        sources = ' + '.join(t_name(j) for j in cols)
        lines.append(f'{s_name(i)} <- {sources} ({kind})')
    same = len(columns) - len(lines)
    if same:
        lines.insert(
            0, f'{same} of {len(columns)} student classes by '
            'the same name')
    used = {j for cols in columns for j in cols}
    dropped = [t_name(j) for j in range(teacher_count) if j not in used]
    if dropped:
        fate = 'to background' if background else 'dropped'
        lines.append(f'teacher classes {fate} ({len(dropped)}): '
                     f'{", ".join(dropped)}')
    return lines


# -- applying a map --------------------------------------------------------
class ClassMapping:
    """Map the teacher's class columns onto the student's.

    Args:
        columns (list[int | list[int]]): Per student class, the teacher
            class (or classes) it takes.
        classes (int): Classes the teacher head predicts (without
            background).
        activation (str): ``'sigmoid'`` or ``'softmax'``: how the loss
            reads the logits.
        background (bool): Both heads have a background column after their
            classes (softmax detection heads). Defaults to False.
        combine (str, optional): How several teacher classes combine:
            ``'sum'`` (of probabilities; softmax), ``'max'`` or
            ``'noisy_or'`` (sigmoid). Defaults to None: ``'sum'`` for
            softmax, ``'max'`` for sigmoid.

    The channels of the teacher's logits are read as ``A`` blocks of its
    ``classes (+1)`` columns (``a*C + c``, MMDet's anchor-major layout;
    ``A = 1`` for classifiers and segmentors), each block mapped on its
    own.
    """

    def __init__(self,
                 columns: Sequence[Union[int, Sequence[int]]],
                 classes: int,
                 activation: str,
                 background: bool = False,
                 combine: Optional[str] = None) -> None:
        if activation not in COMBINE:
            raise ValueError(f'class mapping: activation must be one of '
                             f'{tuple(COMBINE)}, got {activation!r}')
        combine = combine or DEFAULT_COMBINE[activation]
        if combine not in COMBINE[activation]:
            raise ValueError(
                f'class mapping: combine={combine!r} does not fit a '
                f'{activation} head; use one of {COMBINE[activation]}')
        self.columns = [[c] if isinstance(c, int) else [int(x) for x in c]
                        for c in columns]
        if not self.columns or any(not c for c in self.columns):
            raise ValueError('class mapping: every student class needs a '
                             f'teacher class, got {list(columns)}')
        bad = [
            c for cols in self.columns for c in cols if not 0 <= c < classes
        ]
        if bad:
            raise ValueError(f'class mapping: teacher class indices {bad} '
                             f'are out of range (the teacher has {classes})')
        self.classes = classes
        self.activation = activation
        self.background = background
        self.combine = combine

    @property
    def teacher_width(self) -> int:
        return self.classes + int(self.background)

    @property
    def student_width(self) -> int:
        return len(self.columns) + int(self.background)

    def blocks(self, channels: int, width: int, side: str) -> int:
        """Anchor blocks in ``channels``, or raise naming both sides."""
        if channels % width:
            raise ValueError(
                f'class mapping: the {side} gives {channels} channels, not '
                f'a multiple of its {width} columns per block '
                f'({len(self.columns)} student / {self.classes} teacher '
                f'classes{" + background" if self.background else ""})')
        return channels // width

    def __call__(self, teacher: Tensor) -> Tensor:
        """The teacher's logits ``(N, A*(C_t[+1]), *spatial)`` as
        ``(N, A*(C_s[+1]), *spatial)`` float32 columns of the student's
        classes: logits (sigmoid) or log-probabilities (softmax)."""
        n, k = teacher.shape[:2]
        spatial = teacher.shape[2:]
        anchors = self.blocks(k, self.teacher_width, 'teacher')
        x = teacher.float().reshape(n, anchors, self.teacher_width, *spatial)
        if self.activation == 'softmax':
            x = F.log_softmax(x, dim=2)
        first = x.new_tensor([c[0] for c in self.columns], dtype=torch.long)
        out = x.index_select(2, first)
        for i, cols in enumerate(self.columns):
            if len(cols) > 1:
                out[:, :, i] = self._combine(x[:, :, cols])
        if self.activation == 'softmax':
            if self.background:
                used = {c for cols in self.columns for c in cols}
                rest = [c for c in range(self.classes) if c not in used]
                rest.append(self.classes)  # the background column
                bg = torch.logsumexp(x[:, :, rest], dim=2, keepdim=True)
                out = torch.cat([out, bg], dim=2)
            # Drop the unmapped mass (no background), or a class counted
            # twice: the rows are distributions again.
            out = out - torch.logsumexp(out, dim=2, keepdim=True)
        elif self.background:
            out = torch.cat([out, x[:, :, self.classes:]], dim=2)
        return out.reshape(n, anchors * self.student_width, *spatial)

    def _combine(self, group: Tensor) -> Tensor:
        """Several teacher columns (dim 2) as one."""
        if self.combine == 'sum':  # log-probabilities
            return torch.logsumexp(group, dim=2)
        if self.combine == 'max':  # max of logits = logit of max
            return group.amax(dim=2)
        # noisy-or: log(1 - p) = sum_i log(1 - p_i); logit = log p - log(1-p)
        log_not = F.logsigmoid(-group).sum(dim=2).clamp(max=-1e-30)
        # log(1 - exp(x)), stable on both sides of -log 2.
        log_p = torch.where(log_not > -0.6931,
                            torch.log(-torch.expm1(log_not)),
                            torch.log1p(-torch.exp(log_not)))
        return log_p - log_not

    def to_config(self) -> dict:
        """The pasteable form (``teacher_columns=...`` of a term)."""
        return dict(
            columns=[c[0] if len(c) == 1 else list(c) for c in self.columns],
            classes=self.classes,
            background=self.background,
            combine=self.combine)

    @classmethod
    def from_config(cls, cfg: dict, activation: str) -> 'ClassMapping':
        cfg = copy.deepcopy(dict(cfg))
        unknown = set(cfg) - {'columns', 'classes', 'background', 'combine'}
        if unknown or 'columns' not in cfg or 'classes' not in cfg:
            raise ValueError(
                'teacher_columns must be dict(columns=[...], classes=<int>, '
                'background=<bool>, combine=<str>) as the expansion writes '
                f'it, got {cfg}; write class_map=... on the term instead')
        return cls(activation=activation, **cfg)

    def describe(self) -> str:
        return (f'{self.classes} teacher classes -> {len(self.columns)} '
                f'student classes ({self.activation}, combine='
                f'{self.combine}{", background" if self.background else ""})')


# -- the expansion's step ----------------------------------------------------
class ClassNames:
    """The two models' class names; the teacher's looked up only when a
    term needs them (reading its config or checkpoint costs time).

    Args:
        student (Sequence[str], optional): Student class names.
        teacher (Sequence[str] | callable, optional): Teacher class names,
            or a function returning them (or None).
    """

    def __init__(self, student=None, teacher=None) -> None:
        self.student = _as_names(student)
        self._teacher = teacher
        self._looked_up = not callable(teacher)

    @property
    def teacher(self) -> Optional[List[str]]:
        if not self._looked_up:
            self._teacher = self._teacher()
            self._looked_up = True
        return _as_names(self._teacher)


#: Term keys the user writes; the expansion turns them into
#: ``teacher_columns``.
USER_KEYS = ('class_map', 'class_combine')


def _site_at(model, path: str, owner: str):
    """The class-logits site (see :mod:`~mmdist.distillers.expand`) that
    ``path`` names in ``model``, or None."""
    from .expand import _canonical, slot_sites
    from .families import SLOTS
    try:
        path = _canonical(model, path)
    except (AttributeError, IndexError, TypeError):
        return None
    for slot in SLOTS:
        try:
            heads, _ = slot_sites(model, slot, owner)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        for stages in heads:
            for sites in stages:
                for site in sites:
                    if site.path == path:
                        return site
    return None


def head_classes(model, site) -> Optional[Tuple[int, int, bool]]:
    """``(classes, columns per block, background)`` of a site's head, or
    None where its head does not say."""
    from .expand import _out_channels, _resolve
    head = _resolve(model, getattr(site, 'head', '') or '')
    classes = getattr(head, 'num_classes', None)
    if not isinstance(classes, int) or isinstance(classes, bool):
        return None
    if site.rows == 'anchor':
        width = site.num_classes
    else:
        width = _out_channels(_resolve(model, site.path)) or classes
    if width not in (classes, classes + 1):
        return None
    # MMDet's softmax heads: C + 1 columns, background last.
    return classes, width, width == classes + 1


def mapped_channels(teacher_columns: dict, channels: int) -> int:
    """Channels of a teacher output once mapped (for shape checks)."""
    width = teacher_columns['classes'] + int(
        bool(teacher_columns.get('background')))
    student = len(teacher_columns['columns']) + int(
        bool(teacher_columns.get('background')))
    return channels // width * student if channels % width == 0 else channels


def _names_differ(names: ClassNames, count: int) -> bool:
    """Both models name their ``count`` classes, differently (a list of
    another length, a config whose data was not edited with the head,
    says nothing)."""
    if names.student is None or len(names.student) != count:
        return False
    teacher = names.teacher
    return teacher is not None and len(teacher) == count and (teacher
                                                              != names.student)


def map_term_classes(terms: List[dict], student, teacher,
                     names: Optional[ClassNames]) -> List[str]:
    """Give each class-logits term whose two heads predict other classes
    (counts or names) the teacher's columns of the student's classes
    (``teacher_columns``), in place; resolve the terms' ``class_map``.

    Args:
        terms (list[dict]): Explicit term configs (``class_map`` /
            ``class_combine`` are removed from them).
        student (nn.Module): The student.
        teacher (nn.Module): The teacher.
        names (ClassNames, optional): The two models' class names.

    Returns:
        list[str]: Log lines: per mapped term, the classes matched other
        than by the same name and the teacher classes dropped.

    Raises:
        ValueError: A student class with no teacher class, names unknown
            where needed, a ``class_map`` on a term whose columns are not
            classes, or heads whose anchors per position differ.
    """
    from mmdist.registry import MODELS
    names = names or ClassNames()
    notes = []
    for term in terms:
        user_map = term.pop('class_map', None)
        combine = term.pop('class_combine', None)
        if user_map is not None and not isinstance(user_map, dict):
            raise ValueError(f'class_map must be a dict (student class -> '
                             f'teacher class or list), got {user_map!r}')
        where = (f'distillation term {term.get("name") or ""!r} (student '
                 f'{term["student_module"]}, teacher '
                 f'{term["teacher_module"]})')
        asked = user_map is not None or combine is not None
        s_site = _site_at(student, term['student_module'], 'student')
        t_site = _site_at(teacher, term['teacher_module'], 'teacher')
        loss_cls = MODELS.get(str(term['loss'].get('type', '')))
        params = inspect.signature(loss_cls).parameters if loss_cls else {}
        scores = 'activation' in params
        if s_site is None or t_site is None or not scores:
            if asked:
                raise ValueError(
                    f'{where}: class_map maps class columns, but this term '
                    'compares ' + ('outputs that are not class logits of a '
                                   'listed head (features, mimic)'
                                   if scores else f'{term["loss"]["type"]}'
                                   ' outputs, not class scores') +
                    '; leave class_map out of it')
            continue
        s_info = head_classes(student, s_site)
        t_info = head_classes(teacher, t_site)
        if s_info is None or t_info is None:
            if asked:
                raise ValueError(f'{where}: the heads do not say how many '
                                 'classes they predict (num_classes), so '
                                 'their columns cannot be mapped')
            continue
        (c_s, w_s, bg_s), (c_t, w_t, bg_t) = s_info, t_info
        same = c_s == c_t and not _names_differ(names, c_s)
        if same and not asked:
            continue
        if bg_s != bg_t:
            raise ValueError(
                f'{where}: one head has a background column and the other '
                f'not ({w_s} columns for {c_s} classes, {w_t} for {c_t})')
        if s_site.rows != t_site.rows:
            continue  # _check_rows has refused it
        from .expand import _out_channels, _resolve
        out_s = _out_channels(_resolve(student, s_site.path))
        out_t = _out_channels(_resolve(teacher, t_site.path))
        if out_s and out_t and out_s // w_s != out_t // w_t:
            raise ValueError(
                f'{where}: {out_s // w_s} and {out_t // w_t} anchors per '
                'position: different anchors, the rows do not correspond')
        columns, how = resolve_columns(names.student, names.teacher, c_s, c_t,
                                       user_map, where)
        activation = term['loss'].get('activation',
                                      params['activation'].default)
        mapping = ClassMapping(columns, c_t, activation, bg_s, combine)
        term['teacher_columns'] = mapping.to_config()
        label = term.get('name') or term['student_module']
        notes.append(f'{label}: class map, {mapping.describe()}')
        notes += [
            f'{label}:   {line}'
            for line in describe(columns, how, names.student, names.teacher,
                                 c_t, bg_s and activation == 'softmax')
        ]
    return notes
