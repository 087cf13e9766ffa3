"""Build, load and freeze the teacher; give it the input normalisation it was
trained with."""
import logging
import os
import os.path as osp
from typing import Optional, Union

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_checkpoint
from torch import Tensor, nn

from mmdist.registry import MODELS


def load_teacher_config(teacher: Union[str, dict]) -> ConfigDict:
    """Return the teacher's model dict, with ``_scope_`` set from its config.

    Args:
        teacher (str | dict): A model dict, or a config path: ``mmdet::...``,
            ``mmseg::...``, ``mmpretrain::...``, ``mmdist::...`` or a file
            path (relative paths resolve from the working directory).

    Returns:
        ConfigDict: The teacher's model dict.
    """
    if isinstance(teacher, dict):
        return ConfigDict(teacher)
    if not isinstance(teacher, str):
        raise TypeError('teacher must be a model dict or a config path, got '
                        f'{type(teacher).__name__}')
    if '::' not in teacher and not osp.isfile(teacher):
        raise FileNotFoundError(
            f'teacher config {teacher!r} does not exist (relative paths '
            f'resolve from the working directory {os.getcwd()}; package '
            'configs are written like mmdet::retinanet/<name>.py)')
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
    if cfg.get('default_scope') and '_scope_' not in model:
        model['_scope_'] = cfg.default_scope
    return model


def build_frozen_teacher(teacher: Union[str, dict],
                         checkpoint: Optional[str]) -> nn.Module:
    """Build the teacher, load its checkpoint and freeze it in eval mode.

    The checkpoint overrides every weight, so the teacher's own pretrained
    ``init_cfg`` is never applied (nothing is downloaded for it).

    Args:
        teacher (str | dict): Config path or model dict
            (see :func:`load_teacher_config`).
        checkpoint (str, optional): Local path or URL of the teacher's
            weights. ``None`` leaves the teacher randomly initialised (tests
            and demos only) and warns loudly.

    Returns:
        nn.Module: The frozen teacher, in eval mode.
    """
    model_cfg = load_teacher_config(teacher)
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
    else:
        if '://' not in checkpoint and not osp.isfile(
                osp.expanduser(checkpoint)):
            raise FileNotFoundError(
                f'teacher checkpoint {checkpoint!r} does not exist')
        load_checkpoint(
            model, checkpoint, map_location='cpu', strict=True,
            logger='current')
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model


def _normalisation(preprocessor: nn.Module):
    """(mean, std, channel flip, pad value) of an OpenMMLab preprocessor."""
    enabled = getattr(preprocessor, '_enable_normalize', False)
    mean = preprocessor.mean.flatten() if enabled else None
    std = preprocessor.std.flatten() if enabled else None
    flip = bool(
        getattr(preprocessor, '_channel_conversion',
                getattr(preprocessor, 'channel_conversion', False)))
    pad = getattr(preprocessor, 'pad_value', getattr(preprocessor, 'pad_val',
                                                     0))
    return mean, std, flip, pad


class InputRenormaliser:
    """Turn the student's normalised batch into the teacher's.

    Student and teacher see the same augmented batch; when their data
    preprocessors normalise differently (caffe vs pytorch mean/std, BGR vs
    RGB) the student's input is mapped back to pixels and normalised as the
    teacher's preprocessor would have done. Padding is set to the teacher's
    pad value using each sample's ``img_shape``.

    Args:
        student_preprocessor (nn.Module): The student's data preprocessor.
        teacher_preprocessor (nn.Module): The teacher's data preprocessor.
    """

    def __init__(self, student_preprocessor: nn.Module,
                 teacher_preprocessor: nn.Module) -> None:
        self.student = _normalisation(student_preprocessor)
        self.teacher = _normalisation(teacher_preprocessor)
        self.needed = not self._same(self.student, self.teacher)

    @staticmethod
    def _same(a, b) -> bool:

        def equal(x, y):
            if x is None or y is None:
                return x is None and y is None
            return x.shape == y.shape and bool(torch.allclose(x, y))

        return equal(a[0], b[0]) and equal(a[1], b[1]) and a[2] == b[2]

    def __call__(self, inputs: Tensor, data_samples=None) -> Tensor:
        """Return the teacher's input for a student batch ``(N, 3, H, W)``."""
        if not self.needed or not isinstance(inputs, Tensor):
            return inputs
        s_mean, s_std, s_flip, _ = self.student
        t_mean, t_std, t_flip, t_pad = self.teacher

        def channel(v):
            return v.to(inputs.device, inputs.dtype).view(1, -1, 1, 1)

        pixels = inputs
        if s_mean is not None:
            pixels = pixels * channel(s_std) + channel(s_mean)
        if s_flip != t_flip:
            pixels = pixels.flip(1)
        if t_mean is not None:
            pixels = (pixels - channel(t_mean)) / channel(t_std)
        for i, sample in enumerate(data_samples or []):
            shape = getattr(sample, 'img_shape', None)
            if shape is None:
                continue
            height, width = shape[:2]
            pixels[i, :, height:, :] = t_pad
            pixels[i, :, :, width:] = t_pad
        return pixels
