"""``docs/en/user_guides/supported_models.md``, rendered from the head-family
table.

The page is a pure function of the head-family table
(:data:`mmdist.distillers.families.HEAD_FAMILIES`),
:data:`~mmdist.distillers.families.ZOO` and the zoo configs of the installed
packages (read, not built), so it cannot drift from what the expansion does:
``.dev_scripts/supported_models.py`` writes it, and
``tests/test_families.py`` checks that the file in the repository is what
this module renders and that every zoo model expands, at build time, into
the terms the page lists.
"""
import inspect
from typing import Dict, List, Optional, Tuple

from mmengine.config import Config

from mmdist.distillers.families import (HEAD_FAMILIES, SLOTS, ZOO, HeadFamily,
                                        ZooModel, family_of)

_SIGMOID_LOSSES = ('FocalLoss', 'QualityFocalLoss', 'VarifocalLoss',
                   'AsymmetricLoss', 'GaussianFocalLoss')
_PACKAGES = {
    'mmdet': 'MMDetection',
    'mmseg': 'MMSegmentation',
    'mmpretrain': 'MMPretrain'
}


def _registry(package: str):
    """The package's MODELS registry, with all its modules registered."""
    if package == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    elif package == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        from mmpretrain.registry import MODELS
        from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS


def zoo_model_config(zoo: ZooModel) -> dict:
    """The zoo config's ``model`` dict (read, not built)."""
    path, _ = Config._get_cfg_path(zoo.config, '')
    return Config.fromfile(path).model


def _activation(cfg: dict, cls: type, family: HeadFamily) -> str:
    """The activation the expansion will find, read from the head's config
    (its loss), or from the head class's default loss."""
    if family.activation != 'loss':
        return family.activation
    for key in ('loss_cls', 'loss_decode', 'loss'):
        loss = cfg.get(key)
        if loss is None:
            loss = _default(cls, key)
        if isinstance(loss, (list, tuple)):
            loss = loss[0] if loss else None
        if isinstance(loss, dict):
            if loss.get('use_sigmoid') or str(
                    loss.get('type')).split('.')[-1] in _SIGMOID_LOSSES:
                return 'sigmoid'
            if loss.get('mode') == 'multi_label':
                return 'sigmoid'
            return 'softmax'
    if any(c.__name__ == 'MultiLabelClsHead' for c in cls.__mro__):
        return 'sigmoid'
    return 'softmax'


def _default(cls: type, key: str):
    """The default of ``__init__`` argument ``key`` along the MRO (a head
    that passes ``**kwargs`` on gets its base's default)."""
    for base in cls.__mro__:
        init = base.__dict__.get('__init__')
        if init is None:
            continue
        param = inspect.signature(init).parameters.get(key)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return None


def _logits_paths(path: str, family: HeadFamily) -> List[str]:
    out = []
    for logits in family.logits:
        logits = logits.rstrip('?')
        full = f'{path}.{logits}' if logits else path
        full = full.replace('.-1', '.<last>')
        out.append(full + ('.<level>' if family.per_level else ''))
    return out


def zoo_rows(zoo: ZooModel) -> Tuple[List[Tuple[str, str, str]], str]:
    """What the short form gives for a zoo model, read from its config.

    Returns:
        tuple: ``(term path pattern, head type, activation)`` rows, and the
        status: ``'distilled'`` (with a pointer to the upstream issue, if
        any) or ``'refused (<head type>)'``.
    """
    package = zoo.config.split('::')[0]
    registry = _registry(package)
    model = zoo_model_config(zoo)
    rows: List[Tuple[str, str, str]] = []
    refused: Optional[str] = None
    for slot in SLOTS:
        cfg = model.get(slot.name)
        if cfg is None:
            continue
        if isinstance(cfg, (list, tuple)):
            heads = [(f'{slot.name}.{i}', c) for i, c in enumerate(cfg)]
        else:
            heads = [(slot.name, cfg)]
        cascade = slot.name == 'decode_head' and len(heads) > 1
        for index, (path, head_cfg) in enumerate(heads):
            cls = registry.get(head_cfg['type'])
            family = family_of(cls)
            if family is None:
                rows.append((path, cls.__name__, 'no family entry'))
                continue
            if family.refused:
                if cascade and index > 0:
                    rows.append((path, cls.__name__, 'left out (refused)'))
                else:
                    refused = refused or cls.__name__
                continue
            if family.skipped:
                rows.append((path, cls.__name__, 'left out'))
                continue
            if family.inner:
                inner = head_cfg[family.inner]
                boxes = ([(f'{path}.{family.inner}.{i}', c)
                          for i, c in enumerate(inner)] if isinstance(
                              inner,
                              (list, tuple)) else [(f'{path}.{family.inner}',
                                                    inner)])
                for box_path, box_cfg in boxes:
                    box_cls = registry.get(box_cfg['type'])
                    box_family = family_of(box_cls)
                    for term in _logits_paths(box_path, box_family):
                        rows.append((term, box_cls.__name__,
                                     _activation(box_cfg, box_cls,
                                                 box_family)))
                continue
            for term in _logits_paths(path, family):
                rows.append(
                    (term, cls.__name__, _activation(head_cfg, cls, family)))
    if refused:
        status = f'refused ({refused})'
    else:
        status = 'distilled' + (' (upstream issue below)'
                                if zoo.upstream else '')
    return rows, status


def render() -> str:
    """The whole ``docs/en/user_guides/supported_models.md``."""
    out = [
        '# Supported models',
        '',
        '<!-- Generated by .dev_scripts/supported_models.py from '
        'mmdist/distillers/families.py; tests/test_families.py checks it is '
        'current. Do not edit by hand. -->',
        '',
        'A short term, `dict(head=SLOT, loss=dict(type=\'mmdist.DISTLoss\'))`'
        ' or `dict(loss=...)` for every class head (or `distill_terms` left '
        'out), expands at build time into the terms below: one per module '
        'holding class logits, per FPN level where the head has one module '
        'per level (`<level>`), per cascade stage and per auxiliary head, '
        'with the activation the head is trained with and, for dense '
        'detection heads, `num_classes` so that every (image, anchor, '
        'position) is a row. Auxiliary heads get `loss_weight` x 0.4. '
        '`python tools/misc/print_terms.py CONFIG` prints the expansion '
        'for any config as pasteable `distill_terms`.',
        '',
        '## Zoo models',
        '',
        'One zoo config per family (the smallest variant), both as student '
        'and as teacher with random weights: `tests/test_families.py` builds '
        'the distiller, runs one training step (finite distillation loss, '
        'non-zero gradient on every distilled student module) and one '
        'predict. *heavy*: marked `heavy` in the test (slow on 2 CPU '
        'cores).',
        '',
        '| family | config | expanded terms (head type, activation) '
        '| status |',
        '| --- | --- | --- | --- |',
    ]
    notes: Dict[str, str] = {}
    for zoo in ZOO:
        rows, status = zoo_rows(zoo)
        terms = '<br>'.join(f'`{p}` ({t}, {a})' for p, t, a in rows) or '-'
        if zoo.upstream:
            notes[zoo.family] = zoo.upstream
        config = zoo.config.split('::')[1]
        heavy = ' *heavy*' if zoo.heavy else ''
        out.append(f'| {zoo.family}{heavy} | `{config}` | {terms} | '
                   f'{status} |')
    out += [
        '', 'Upstream issues (the zoo model fails here without mmdist):', ''
    ]
    out += [f'- {family}: {reason}.' for family, reason in notes.items()]
    out += [
        '',
        '## Head families',
        '',
        'The table the expansion, the teacher plan, this page and the test '
        'read (`mmdist/distillers/families.py`). A head type not listed is '
        'looked up by its base classes.',
        '',
        '| family | head types | class logits | activation | rows | status |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for family in HEAD_FAMILIES:
        heads = ', '.join(f'`{h}`' for h in family.heads)
        if family.inner:
            logits = f'in its `{family.inner}` (per stage)'
        else:
            logits = ', '.join(f'`{name.rstrip("?") or "(forward output)"}`' +
                               (' (if present)' if name.endswith('?') else '')
                               for name in family.logits) or '-'
            if family.per_level:
                logits += ', one per level'
        activation = ('from the loss' if family.activation == 'loss' else
                      family.activation) if family.logits else '-'
        rows = family.rows if family.logits else '-'
        if family.refused:
            status = f'refused: {family.refused}'
        elif family.skipped:
            status = f'left out by the short form: {family.skipped}'
        else:
            status = 'distilled'
        if family.note:
            status += f' ({family.note})'
        out.append(f'| {family.name} | {heads} | {logits} | {activation} | '
                   f'{rows} | {status} |')
    out += [
        '', 'Refused heads fail when the distiller is built, naming the head '
        'type and the reason; supported instead: feature mimicking on the '
        'neck (`mmdist.FeatureMSELoss`, with a `mmdist.ConvConnector` when '
        'the channels differ).', ''
    ]
    return '\n'.join(out)
