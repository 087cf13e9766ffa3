"""Build, load and freeze the teacher; give it the input normalisation it was
trained with, and the form it runs in (float32, or the fast form of
:mod:`mmdist.distillers.fast_form`)."""
import copy
import logging
import os
import os.path as osp
import re
from typing import Callable, List, Optional, Sequence, Union

import torch
from mmengine.config import Config, ConfigDict
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import (_load_checkpoint,
                                        _load_checkpoint_to_model)
from torch import nn

from mmdist.registry import MODELS
from mmdist.utils.student import STUDENT_PREFIX, distillation_checkpoint_note
from .fast_form import TeacherForm, make_fast, resolve_precision
from .shape_probe import PROBE_SIZES


def load_teacher_config(
        teacher: Union[str, dict],
        default_preprocessor: Optional[dict] = None) -> ConfigDict:
    """Return the teacher's model dict as its own config's Runner builds it.

    MMPretrain (and some user configs) declare the input normalisation at
    the top level (``data_preprocessor = dict(mean=..., std=...)``) and
    leave it out of ``model``; MMEngine's Runner merges it into the model.
    The same is done here, so the teacher normalises as it was trained.

    Args:
        teacher (str | dict): A model dict, or a config path: ``mmdet::...``,
            ``mmseg::...``, ``mmpretrain::...``, ``mmdist::...`` or a file
            path. Relative file paths resolve from the working directory;
            the tools resolve them from the distillation config's folder
            first (see :func:`mmdist.utils.config.resolve_teacher_paths`).
        default_preprocessor (dict, optional): Used when the teacher is a
            model dict without ``data_preprocessor`` (a dict written in the
            distillation config shares that config's top-level one).

    Returns:
        ConfigDict: The teacher's model dict, with ``_scope_`` set from its
        config's ``default_scope``.
    """
    if isinstance(teacher, dict):
        model = ConfigDict(copy.deepcopy(teacher))
        if model.get('data_preprocessor') is None and default_preprocessor:
            model['data_preprocessor'] = copy.deepcopy(default_preprocessor)
        return model
    if not isinstance(teacher, str):
        raise TypeError('teacher must be a model dict or a config path, got '
                        f'{type(teacher).__name__}')
    if '::' not in teacher and not osp.isfile(teacher):
        raise FileNotFoundError(
            f'teacher config {teacher!r} does not exist (a relative path '
            f'resolves from the working directory {os.getcwd()} unless '
            "mmdist's tools/train.py or tools/test.py resolve it from the "
            "config's folder; write teacher='{{ fileDirname }}/<file>.py' "
            'to make it relative to the config file wherever it runs; '
            'package configs are written like mmdet::retinanet/<name>.py)')
    try:
        path = teacher
        if '::' in teacher:
            # The same lookup MMEngine does for `_base_ = 'mmdet::...'`.
            path, _ = Config._get_cfg_path(teacher, '')
        cfg = Config.fromfile(path)
    except (FileNotFoundError, AssertionError, ValueError,
            ModuleNotFoundError) as error:
        raise FileNotFoundError(
            f'teacher config {teacher!r} does not resolve: {error}') from None
    if 'model' not in cfg:
        raise KeyError(f'teacher config {teacher!r} defines no model')
    model = ConfigDict(cfg.model)
    if model.get('data_preprocessor') is None and cfg.get(
            'data_preprocessor') is not None:
        model['data_preprocessor'] = ConfigDict(cfg.data_preprocessor)
    if cfg.get('default_scope') and '_scope_' not in model:
        model['_scope_'] = cfg.default_scope
    return model


def _without_pretrained(init_cfg):
    """``init_cfg`` without its ``Pretrained`` entries (None if none left)."""
    if isinstance(init_cfg, dict):
        return None if init_cfg.get('type') == 'Pretrained' else init_cfg
    if isinstance(init_cfg, (list, tuple)):
        kept = [c for c in init_cfg if _without_pretrained(c) is not None]
        return kept or None
    return init_cfg


def init_random_teacher(model: nn.Module) -> None:
    """Initialise a teacher that has no checkpoint as the Runner would
    (``init_weights()``), without the downloads its ``init_cfg`` may name.

    Some parameters are set only by ``init_weights`` (SSD's
    ``neck.l2_norm.weight``, DINO's ``level_embed``); left alone they hold
    uninitialised memory. Every ``Pretrained`` entry of every submodule's
    ``init_cfg`` is dropped first, so the backbone is initialised as its
    ``init_weights`` does without pretrained weights (Swin/MiT-style
    backbones load them only when their ``init_cfg`` says ``Pretrained``).

    Args:
        model (nn.Module): The freshly built teacher, changed in place.
    """
    for module in model.modules():
        if hasattr(module, 'init_cfg'):
            module.init_cfg = _without_pretrained(module.init_cfg)
    if hasattr(model, 'init_weights'):
        model.init_weights()


def _teacher_name(teacher: Union[str, dict]) -> str:
    """The teacher's config, in words."""
    if isinstance(teacher, str):
        return f'the teacher config {teacher!r}'
    return f'the teacher model dict (type={teacher.get("type")!r})'


def _examples(names: list, limit: int = 3) -> str:
    """``'a, b, c and 4 more'``."""
    shown = ', '.join(str(n) for n in names[:limit])
    more = len(names) - limit
    return f'{shown} and {more} more' if more > 0 else shown


def checkpoint_mismatch(model: nn.Module, state: dict) -> List[str]:
    """How a state dict differs from a model's, as strict loading judges.

    Args:
        model (nn.Module): The model.
        state (dict): The weights to load (``module.`` prefixes removed).

    Returns:
        list[str]: One phrase per kind of difference (unexpected keys,
        missing keys, size mismatch), with counts and examples; empty when
        the state dict fits.
    """
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    # MMEngine's strict loading forgives missing BatchNorm counters.
    missing = [
        k for k in own if k not in state and 'num_batches_tracked' not in k
    ]
    shapes = [
        f'{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in '
        'the teacher' for k, v in own.items() if k in state
        and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    problems = []
    if unexpected:
        problems.append(f'unexpected keys (in the file, not in the '
                        f'teacher): {len(unexpected)}, e.g. '
                        f'{_examples(unexpected)}')
    if missing:
        problems.append(f'missing keys (in the teacher, not in the file): '
                        f'{len(missing)}, e.g. {_examples(missing)}')
    if shapes:
        problems.append(f'size mismatch: {len(shapes)}, e.g. '
                        f'{_examples(shapes, 2)}')
    return problems


def load_teacher_checkpoint(model: nn.Module, checkpoint: str,
                            teacher: Union[str, dict]) -> None:
    """Load ``teacher_ckpt`` strictly, or say which file does not fit which
    teacher and why.

    Args:
        model (nn.Module): The teacher built from ``teacher``.
        checkpoint (str): Local path or URL of its weights.
        teacher (str | dict): The teacher's config path or model dict (named
            in the error).

    Raises:
        RuntimeError: When the weights do not fit the teacher: the config,
            the file, counts and examples of the differing keys, and, for a
            distillation checkpoint (``student.*`` keys), how to export its
            student as a plain checkpoint.
    """
    ckpt = _load_checkpoint(checkpoint, map_location='cpu', logger='current')
    if not isinstance(ckpt, dict):
        raise RuntimeError(f'teacher_ckpt {checkpoint!r} holds no state dict '
                           f'for {_teacher_name(teacher)}')
    state = ckpt.get('state_dict', ckpt)
    # The prefix MMEngine's load_checkpoint strips (DDP-wrapped weights).
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
    problems = checkpoint_mismatch(model, state)
    if problems:
        advice = 'check that teacher and teacher_ckpt name the same model'
        if any(k.startswith(STUDENT_PREFIX) for k in state):
            advice = (
                f'{distillation_checkpoint_note(checkpoint)}, not a '
                'teacher\'s: to distil from that student, write it as a '
                'plain checkpoint with `python tools/model_converters/'
                f'export_student.py {checkpoint} STUDENT.pth`, set '
                "teacher_ckpt='STUDENT.pth' and teacher to that student's "
                'config')
        raise RuntimeError(
            f'teacher_ckpt {checkpoint!r} does not fit '
            f'{_teacher_name(teacher)}: {"; ".join(problems)}. {advice}.')
    _load_checkpoint_to_model(model, ckpt, strict=True, logger='current')
    meta = ckpt.get('meta')
    if isinstance(meta, dict) and isinstance(meta.get('dataset_meta'), dict):
        # Its class names, for a student of another label set (class_map).
        model.dataset_meta = meta['dataset_meta']


def build_frozen_teacher(
        teacher: Union[str, dict],
        checkpoint: Optional[str],
        default_preprocessor: Optional[dict] = None) -> nn.Module:
    """Build the teacher, load its checkpoint and freeze it in eval mode.

    The checkpoint overrides every weight, so the teacher's own pretrained
    ``init_cfg`` is never applied (nothing is downloaded for it).

    Args:
        teacher (str | dict): Config path or model dict
            (see :func:`load_teacher_config`).
        checkpoint (str, optional): Local path or URL of the teacher's
            weights. ``None`` leaves the teacher randomly initialised by its
            ``init_weights()`` (see :func:`init_random_teacher`; tests and
            demos only) and warns loudly.
        default_preprocessor (dict, optional): See
            :func:`load_teacher_config`.

    Returns:
        nn.Module: The frozen teacher, in eval mode.
    """
    model_cfg = load_teacher_config(teacher, default_preprocessor)
    scope = model_cfg.pop('_scope_', None)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(model_cfg)
    # The teacher never trains: SyncBN would only need a process group.
    model = revert_sync_batchnorm(model)
    if checkpoint is None:
        print_log(
            '!' * 70 + '\nNo teacher checkpoint given: the teacher is '
            'RANDOMLY INITIALISED. Distilling from it is only meaningful in '
            'tests and demos.\n' + '!' * 70,
            logger='current',
            level=logging.WARNING)
        init_random_teacher(model)
    else:
        if '://' not in checkpoint and not osp.isfile(
                osp.expanduser(checkpoint)):
            raise FileNotFoundError(
                f'teacher checkpoint {checkpoint!r} does not exist')
        load_teacher_checkpoint(model, checkpoint, teacher)
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model


def _head_paths(model: nn.Module) -> list:
    """Modules called as heads (``bbox_head``, ``decode_head``,
    ``roi_head.bbox_head.1``...): their outputs are post-processed into
    predictions, so the fast form returns them in float32."""
    paths = []
    for path, module in model.named_modules():
        parts = path.split('.')
        named = parts[-1].endswith('head') or (parts[-1].isdigit()
                                               and len(parts) > 1
                                               and parts[-2].endswith('head'))
        if named and not isinstance(module, nn.ModuleList):
            paths.append(path)
    return paths


def _float32_paths(model: nn.Module) -> list:
    """MMCV's compiled ops (RoIAlign, deformable convolutions...): most
    have no bf16 kernel (RoIAlign on the CPU and CUDA), so the fast form
    runs them in float32."""
    return [
        path for path, module in model.named_modules()
        if type(module).__module__.startswith('mmcv.ops')
    ]


def make_fast_teacher(
        model: nn.Module,
        precision: str = 'float32',
        distilled: Sequence[str] = (),
        forward: Optional[Callable[[torch.Tensor],
                                   object]] = None) -> TeacherForm:
    """Put the frozen teacher in the form ``precision`` asks for, once.

    ``'bf16'`` (or ``'fp16'``, CUDA only) gives the fast form: BatchNorm
    folded into the convolution before it, channels_last, autocast in that
    dtype, float32 outputs from the distilled modules and the heads, and
    MMCV's compiled ops in float32 (see :mod:`mmdist.distillers.fast_form`).
    The device decides: the one MMEngine's Runner will move the model to
    (``get_device()``). Where it has no native bf16 (a CPU without
    AVX512-BF16 or AMX, a GPU older than Ampere) the teacher stays float32
    and one log line says so; fp16 on a CPU raises ``ValueError`` with the
    reason (:class:`~mmdist.distillers.Distiller` checks this before it
    builds anything).

    Args:
        model (nn.Module): The frozen teacher from
            :func:`build_frozen_teacher` (eval mode, float32), changed in
            place.
        precision (str): ``'float32'`` (the teacher as its config builds
            it), ``'bf16'`` or ``'fp16'``. Defaults to ``'float32'``.
        distilled (Sequence[str]): Paths of the distilled teacher modules:
            their own outputs stay what the stock teacher computes (not
            folded) and leave the teacher in float32.
        forward (callable, optional): Runs the teacher's forward on an
            ``(N, 3, H, W)`` input (the distiller's teacher plan); used once
            to find the foldable BatchNorm layers. None folds nothing.

    Returns:
        TeacherForm: What a step applies (its ``autocast`` and ``prepare``).
    """
    device = get_device()
    dtype, fallback = resolve_precision(precision, device)
    if fallback is not None:
        print_log(fallback, logger='current', level=logging.WARNING)
    if dtype is None:
        return TeacherForm()
    probe, failure = None, None
    if forward is not None:
        for size in PROBE_SIZES:
            # Its own generator: building must not move the global RNG
            # (the student's initialisation comes after).
            image = torch.randn(
                1, 3, size, size, generator=torch.Generator().manual_seed(0))
            try:
                with torch.no_grad():
                    forward(image)
            except Exception as error:  # a model that needs another size
                failure = f'{type(error).__name__}: {error}'
                continue
            probe = (lambda image=image: forward(image))
            break
        if probe is None:
            print_log(
                'teacher fast form: no BatchNorm folded, the probe forward '
                f'failed at sizes {PROBE_SIZES} ({failure})',
                logger='current',
                level=logging.WARNING)
    form = make_fast(
        model,
        dtype,
        probe,
        keep=distilled,
        outputs=[*distilled, *_head_paths(model)],
        float32_modules=_float32_paths(model))
    print_log(f'teacher form on {device}: {form.describe()}', logger='current')
    return form
