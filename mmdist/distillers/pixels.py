"""Give the teacher the input its own preprocessor would have made.

Student and teacher see the same augmented batch, but their data
preprocessors may map pixels differently (caffe vs pytorch mean/std, BGR vs
RGB, no normalisation at all). Rather than reading each package's private
flags (``_channel_conversion``, ``to_rgb``, ``_enable_normalize``...), each
preprocessor is *asked* how it maps pixels: it is run once, in test mode, on
probe images, and the per-pixel affine map ``out = A @ pixel + b`` it applies
is read off its output. The student's batch is then carried to the teacher's
input space with one ``(C, C)`` matrix and one bias, i.e. a single 1x1
convolution per step.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

# Probe pixel value: exact in every float dtype, inside the uint8 range.
_PROBE = 128.0
_PROBE_SIZE = 32


def pixel_map(preprocessor: nn.Module,
              channels: int = 3) -> Tuple[Tensor, Tensor]:
    """Read the affine map a data preprocessor applies to each pixel.

    The preprocessor runs in test mode (no batch augmentation) on
    ``channels + 1`` constant images: all zeros, then one image per channel
    with only that channel set. The top-left output pixel of each gives the
    columns of ``A`` and ``b`` in ``out = A @ pixel + b``. Each probe comes
    with an empty data sample, because some test-mode settings write into
    them (MMSeg's ``test_cfg=dict(size_divisor=32)`` pads and records the
    padding per sample; MMDet records ``batch_input_shape``). Padding
    (``size_divisor``, ``pad_val``) only adds pixels to the right and
    bottom, so the top-left pixel is the image's own; batch augmentations
    run only in training mode and are not probed.

    Args:
        preprocessor (nn.Module): An OpenMMLab data preprocessor (MMEngine
            ``ImgDataPreprocessor`` or a subclass: MMDet, MMSeg, MMPretrain).
        channels (int): Input channels. Defaults to 3.

    Returns:
        tuple[Tensor, Tensor]: float64 ``A`` of shape ``(C, C)`` and ``b`` of
        shape ``(C,)``.
    """
    probes = [torch.zeros(channels, _PROBE_SIZE, _PROBE_SIZE)]
    for channel in range(channels):
        image = torch.zeros(channels, _PROBE_SIZE, _PROBE_SIZE)
        image[channel] = _PROBE
        probes.append(image)
    try:
        with torch.no_grad():
            samples = [
                BaseDataElement(
                    metainfo=dict(
                        img_shape=(_PROBE_SIZE, _PROBE_SIZE),
                        ori_shape=(_PROBE_SIZE, _PROBE_SIZE))) for _ in probes
            ]
            out = preprocessor(
                dict(inputs=probes, data_samples=samples), False)['inputs']
    except Exception as error:
        raise RuntimeError(
            f'cannot read the pixel normalisation of '
            f'{type(preprocessor).__name__}: running it on probe images '
            f'failed ({type(error).__name__}: {error})') from error
    if not isinstance(out,
                      Tensor) or out.dim() != 4 or out.shape[1] != channels:
        raise RuntimeError(
            f'{type(preprocessor).__name__} did not return a (N, {channels}, '
            f'H, W) batch for probe images; cannot read its normalisation')
    pixel = out[:, :, 0, 0].double().cpu()
    bias = pixel[0]
    matrix = (pixel[1:] - bias).t() / _PROBE
    return matrix, bias


def pad_value(preprocessor: nn.Module) -> float:
    """The value a preprocessor pads batches with (after normalisation)."""
    for name in ('pad_value', 'pad_val'):
        if hasattr(preprocessor, name):
            return float(getattr(preprocessor, name))
    return 0.


class InputRenormaliser:
    """Turn the student's preprocessed batch into the teacher's.

    With ``A_s, b_s`` and ``A_t, b_t`` the pixel maps of the two
    preprocessors (see :func:`pixel_map`), the teacher's input is
    ``A_t @ A_s^-1 @ (x - b_s) + b_t``. Padding (beyond each sample's
    ``img_shape``) is set to the teacher's pad value.

    Args:
        student_preprocessor (nn.Module): The student's data preprocessor.
        teacher_preprocessor (nn.Module): The teacher's data preprocessor.
        channels (int): Input channels. Defaults to 3.
    """

    def __init__(self,
                 student_preprocessor: nn.Module,
                 teacher_preprocessor: nn.Module,
                 channels: int = 3) -> None:
        a_s, b_s = pixel_map(student_preprocessor, channels)
        a_t, b_t = pixel_map(teacher_preprocessor, channels)
        if torch.linalg.matrix_rank(a_s) < channels:
            raise ValueError(
                'the student preprocessor '
                f'{type(student_preprocessor).__name__} loses information '
                '(its pixel map is not invertible), so the '
                'teacher input cannot be recovered from the student batch')
        self.matrix = a_t @ torch.linalg.inv(a_s)
        self.bias = b_t - self.matrix @ b_s
        self.student_pad = pad_value(student_preprocessor)
        self.teacher_pad = pad_value(teacher_preprocessor)
        identity = torch.eye(channels, dtype=torch.float64)
        self.same_pixels = bool(
            torch.allclose(self.matrix, identity, rtol=0, atol=1e-12)
            and torch.allclose(
                self.bias, torch.zeros_like(self.bias), rtol=0, atol=1e-12))
        self.needed = not (self.same_pixels
                           and self.student_pad == self.teacher_pad)

    def describe(self) -> str:
        """One line saying what the renormaliser does, for the log."""
        if not self.needed:
            return 'student and teacher preprocess pixels alike'
        return ('teacher input = M @ student input + c with M = '
                f'{self.matrix.numpy().round(4).tolist()}, c = '
                f'{self.bias.numpy().round(4).tolist()}; pad '
                f'{self.student_pad} -> {self.teacher_pad}')

    def __call__(self,
                 inputs: Tensor,
                 data_samples: Optional[list] = None) -> Tensor:
        """Return the teacher's input for a student batch ``(N, C, H, W)``."""
        if not self.needed or not isinstance(inputs, Tensor):
            return inputs
        if self.same_pixels:
            pixels = inputs.clone()
        else:
            weight = self.matrix.to(inputs.device, inputs.dtype)
            pixels = F.conv2d(inputs, weight[:, :, None, None],
                              self.bias.to(inputs.device, inputs.dtype))
        for i, sample in enumerate(data_samples or []):
            shape = getattr(sample, 'img_shape', None)
            if shape is None:
                continue
            height, width = shape[:2]
            pixels[i, :, height:, :] = self.teacher_pad
            pixels[i, :, :, width:] = self.teacher_pad
        return pixels
