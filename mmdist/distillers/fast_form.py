"""The frozen teacher's fast form, in plain torch.

A frozen teacher in eval mode needs no gradient and never updates its
BatchNorm statistics, so it can run in a cheaper form that computes the same
function up to rounding:

1. **BatchNorm folded** into the convolution that feeds it: an eval-mode
   ``BN(conv(x))`` is the affine map ``scale * conv(x) + shift`` per output
   channel, which is again a convolution (weights times ``scale``, bias
   ``scale * bias + shift``). Exact up to float rounding. Which convolution
   feeds which BatchNorm is read from one probe forward (the actual aten
   operations, see :func:`find_conv_bn_pairs`), not from module names: a pair
   is folded only when every output of the convolution goes to that
   BatchNorm and nowhere else.
2. **channels_last** weights and input, the layout oneDNN (CPU) and cuDNN's
   tensor-core kernels (GPU) run bf16/fp16 convolutions fastest in.
3. **bf16 (or fp16) autocast**: matrix products and convolutions in the low
   precision, the numerically sensitive ops in float32 (autocast's lists).

The outputs that leave the teacher (the distilled modules, the heads whose
outputs are post-processed) are cast back to float32 and the default
layout by forward hooks, so losses and predictions never see bf16. Modules
without low-precision kernels (MMCV's compiled ops: RoIAlign has no bf16
kernel) run in float32 with autocast off.

Everything is decided once, when the teacher is built; a training step
only enters :meth:`TeacherForm.autocast` and calls
:meth:`TeacherForm.prepare` on the input, both no-ops for float32.
"""
import contextlib
import math
import os
from collections import Counter, defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

PRECISIONS: Dict[str, Optional[torch.dtype]] = {
    'float32': None,
    'bf16': torch.bfloat16,
    'fp16': torch.float16,
}

FP16_ON_CPU = (
    "teacher_precision='fp16' is refused on a CPU: CPU convolutions and "
    'matrix products have no fast fp16 kernels (fp16 autocast runs slower '
    "than float32 there) and fp16's range (largest value 65504) can overflow "
    "a teacher's activations; use 'bf16', which keeps float32's range: it "
    'runs in bf16 on CPUs with AVX512-BF16 or AMX units, and on a CPU '
    'without them the teacher runs in float32 (one log line says so) unless '
    'MMDIST_BF16=1 forces bf16, emulated and no faster than float32.')

#: Environment variable that overrides the bf16 capability check: ``0``
#: reports bf16 absent (the teacher stays in float32 whatever the hardware),
#: ``1`` reports it present (bf16 autocast then runs emulated where the
#: hardware has no bf16 unit: the same numerics, slower). Unset or ``auto``:
#: the hardware decides.
BF16_ENV = 'MMDIST_BF16'


def _bf16_override() -> Optional[bool]:
    value = os.environ.get(BF16_ENV, '').strip().lower()
    if value in ('', 'auto'):
        return None
    if value in ('0', 'false', 'off', 'no'):
        return False
    if value in ('1', 'true', 'on', 'yes'):
        return True
    raise ValueError(f'{BF16_ENV}={value!r}: use 0 (bf16 absent), 1 (bf16 '
                     'present) or auto (ask the hardware)')


def bf16_support(device: Union[str, torch.device]) -> Tuple[bool, str]:
    """Whether ``device`` runs bf16 convolutions natively, and why.

    CPUs count when they have AMX-BF16 or AVX512-BF16 instructions (oneDNN
    emulates bf16 on other CPUs, which is no faster than float32); CUDA
    devices when they have bf16 tensor cores (compute capability 8.0,
    Ampere, or newer). The environment variable ``MMDIST_BF16`` overrides
    the answer for every device (see :data:`BF16_ENV`); a user who wants the
    teacher in float32 without editing configs sets ``MMDIST_BF16=0``.

    Args:
        device (str | torch.device): The device the teacher runs on.

    Returns:
        tuple[bool, str]: Supported or not, and the reason in words.
    """
    override = _bf16_override()
    if override is not None:
        return override, (f'{BF16_ENV}={int(override)} reports bf16 '
                          f'{"present" if override else "absent"}')
    device = torch.device(device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            return False, 'CUDA is not available'
        index = device.index if device.index is not None else (
            torch.cuda.current_device())
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        if major >= 8:
            return True, f'{name} (compute capability {major}.{minor})'
        return False, (f'{name} (compute capability {major}.{minor}) has no '
                       'bf16 tensor cores')
    if device.type == 'cpu':
        capabilities = getattr(torch.cpu, 'get_capabilities', None)
        if capabilities is None:
            return False, (f'torch {torch.__version__} cannot tell whether '
                           'the CPU has bf16 instructions')
        caps = capabilities()
        name = caps.get('cpu_name') or caps.get('architecture', 'the CPU')
        found = [k for k in ('amx_bf16', 'avx512_bf16') if caps.get(k)]
        if found:
            return True, f'{name} with {" and ".join(found).upper()}'
        return False, f'{name} has neither AMX-BF16 nor AVX512-BF16'
    return False, f'no bf16 check for {device.type} devices'


def resolve_precision(
    precision: str, device: Union[str, torch.device]
) -> Tuple[Optional[torch.dtype], Optional[str]]:
    """The autocast dtype for ``precision`` on ``device``.

    Args:
        precision (str): ``'float32'``, ``'bf16'`` or ``'fp16'``.
        device (str | torch.device): Where the teacher will run.

    Returns:
        tuple[torch.dtype | None, str | None]: The dtype (None: float32, the
        stock teacher) and, when a bf16 request falls back to float32, the
        log line that says why.

    Raises:
        ValueError: For an unknown precision and for ``'fp16'`` on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'teacher_precision must be one of '
                         f'{sorted(PRECISIONS)}, got {precision!r}')
    device = torch.device(device)
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type == 'cpu':
        raise ValueError(FP16_ON_CPU)
    if dtype is torch.bfloat16:
        supported, why = bf16_support(device)
        if not supported:
            return None, (f"teacher_precision='bf16': {why}, so the teacher "
                          'runs in float32')
    return dtype, None


# ---------------------------------------------------------------- folding
class _ConvBNProbe(TorchDispatchMode):
    """Record, over one forward, which convolution output every BatchNorm
    reads and how many operations read each convolution output."""

    def __init__(self, convs: Dict[int, str], norms: Dict[int, str]) -> None:
        super().__init__()
        self.convs = convs  # id(weight) -> conv path
        self.norms = norms  # id(running_mean) -> BatchNorm path
        self.outputs: List[Tuple[str, Tensor]] = []  # kept alive: ids stay
        self.producer: Dict[int, str] = {}  # id(conv output) -> conv path
        self.readers: Counter = Counter()  # id(tensor) -> reading ops
        self.norm_inputs: Dict[str, List[int]] = defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = [
            t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)
        ]
        for tensor in leaves:
            self.readers[id(tensor)] += 1
        packet = func.overloadpacket
        if (packet is torch.ops.aten.convolution and not args[6]
                and id(args[1]) in self.convs):
            self.outputs.append((self.convs[id(args[1])], out))
            self.producer[id(out)] = self.convs[id(args[1])]
            self.readers[id(out)] = 0
        for tensor in leaves:
            norm = self.norms.get(id(tensor))
            if norm is not None:
                self.norm_inputs[norm].append(id(args[0]))
                break
        return out


def _foldable_norm(module: nn.Module) -> bool:
    return (isinstance(module, _BatchNorm) and not module.training
            and module.track_running_stats and module.running_mean is not None)


def find_conv_bn_pairs(
    model: nn.Module, probe: Callable[[], object], keep: Sequence[str] = ()
) -> List[Tuple[str, str]]:
    """The (convolution, BatchNorm) pairs of ``model`` that fold exactly.

    ``probe()`` runs one forward of the model (any input); the aten
    operations it dispatches are traced. A pair qualifies when the
    BatchNorm is in eval mode with running statistics, reads only outputs
    of that (non-transposed) convolution, and every output of the
    convolution is read by that BatchNorm alone. Modules the probe does not
    run are left as they are.

    Args:
        model (nn.Module): The model, in eval mode.
        probe (callable): Runs a forward of ``model``; its result is unused.
        keep (Sequence[str]): Paths of modules whose own output must not
            change (e.g. a distilled convolution): not folded.

    Returns:
        list[tuple[str, str]]: ``(conv path, BatchNorm path)`` pairs.
    """
    convs, norms = {}, {}
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and path not in keep:
            convs[id(module.weight)] = path
        elif _foldable_norm(module):
            norms[id(module.running_mean)] = path
    tracer = _ConvBNProbe(convs, norms)
    with torch.no_grad(), tracer:
        probe()
    calls = Counter(path for path, _ in tracer.outputs)
    pairs = []
    for norm, inputs in tracer.norm_inputs.items():
        producers = {tracer.producer.get(i) for i in inputs}
        if len(producers) != 1 or None in producers:
            continue
        conv = producers.pop()
        if (calls[conv] == len(inputs)
                and all(tracer.readers[i] == 1 for i in inputs)):
            pairs.append((conv, norm))
    return pairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, norm: _BatchNorm) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it, in place.

    ``norm(conv(x)) == conv'(x)`` with ``W' = W * s`` and
    ``b' = (b - mean) * s + beta`` per output channel, where
    ``s = gamma / sqrt(var + eps)``; computed in float64 and stored in the
    convolution's dtype.

    Args:
        conv (nn.Module): A non-transposed ``nn.Conv1d/2d/3d`` (any groups).
        norm (_BatchNorm): The BatchNorm that reads its output.
    """
    weight = conv.weight
    scale = 1 / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        scale = scale * norm.weight.double()
        shift = shift * norm.weight.double() + norm.bias.double()
    bias = (
        conv.bias.double()
        if conv.bias is not None else torch.zeros_like(shift))
    shape = (-1, ) + (1, ) * (weight.dim() - 1)
    weight.copy_((weight.double() * scale.view(shape)).to(weight.dtype))
    folded = (bias * scale + shift).to(weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(folded, requires_grad=False)
    else:
        conv.bias.copy_(folded)


def _replace(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``target`` is registered in ``model``."""
    for module in model.modules():
        for name, child in module._modules.items():
            if child is target:
                module._modules[name] = new


def fold_batchnorm(
    model: nn.Module, probe: Callable[[], object], keep: Sequence[str] = ()
) -> List[Tuple[str, str]]:
    """Fold every exactly foldable BatchNorm of ``model`` into its
    convolution and put an ``nn.Identity`` in its place.

    Args:
        model (nn.Module): A frozen model in eval mode.
        probe (callable): One forward of ``model``
            (see :func:`find_conv_bn_pairs`).
        keep (Sequence[str]): Module paths whose own output must not
            change (see :func:`find_conv_bn_pairs`).

    Returns:
        list[tuple[str, str]]: The folded ``(conv, BatchNorm)`` paths.
    """
    pairs = find_conv_bn_pairs(model, probe, keep)
    modules = dict(model.named_modules())
    for conv, norm in pairs:
        fold_conv_bn(modules[conv], modules[norm])
        # Eval mode like the rest of the frozen model.
        _replace(model, modules[norm], nn.Identity().eval())
    return pairs


# ---------------------------------------------------------------- the form
def cast_floats(value, dtype: torch.dtype, contiguous: bool = False):
    """``value`` with its floating tensors in ``dtype`` (and, with
    ``contiguous``, the default layout); tuples, lists and dicts are walked.
    A tensor that already is so is returned as it is (no copy)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() and (value.dtype != dtype or contiguous
                                          and not value.is_contiguous()):
            return value.to(
                dtype,
                memory_format=(torch.contiguous_format
                               if contiguous else torch.preserve_format))
        return value
    if type(value) in (tuple, list):
        return type(value)(cast_floats(v, dtype, contiguous) for v in value)
    if type(value) is dict:
        return {k: cast_floats(v, dtype, contiguous) for k, v in value.items()}
    return value


def to_float32(value):
    """``value`` with its floating tensors in float32 and the default
    (contiguous) layout (see :func:`cast_floats`)."""
    return cast_floats(value, torch.float32, contiguous=True)


def _float32_output_hook(module: nn.Module, args: tuple, output):
    return to_float32(output)


class Float32Forward:
    """Instance-level ``forward`` that runs the class's ``forward`` on
    float32 inputs in the default (contiguous) layout with autocast off
    (for compiled ops with no bf16/fp16 or channels_last kernel),
    and returns its outputs in the dtype of its first floating input, so
    that the caller sees the dtypes it passed (MMDet's RoI extractor writes
    RoIAlign's output into a buffer of the features' dtype).

    Holds the module as an attribute (not a closure), so that a deep copy
    of the model calls its own copy.

    Args:
        module (nn.Module): The module to run in float32.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args, **kwargs):
        floats = [
            t for t in tree_leaves((args, kwargs))
            if isinstance(t, Tensor) and t.is_floating_point()
        ]
        if not floats:
            return type(self.module).forward(self.module, *args, **kwargs)
        # Compiled kernels index NCHW memory: the default layout too.
        args, kwargs = to_float32(list(args)), to_float32(dict(kwargs))
        with torch.autocast(floats[0].device.type, enabled=False):
            output = type(self.module).forward(self.module, *args, **kwargs)
        return cast_floats(output, floats[0].dtype)


class TeacherForm:
    """How a frozen teacher runs: its autocast dtype and memory format.

    Built by :func:`make_fast` (or ``TeacherForm()`` for the stock float32
    teacher). A step uses it without asking which form it is::

        with torch.no_grad(), form.autocast(inputs.device.type):
            teacher(form.prepare(inputs))

    Args:
        dtype (torch.dtype, optional): Autocast dtype; None runs float32.
        channels_last (bool): Whether 4-d inputs are made channels_last.
        folded (list[tuple[str, str]]): The folded (conv, BatchNorm) paths.
        float32_modules (list[str]): Paths of the modules run in float32.
    """

    def __init__(
        self,
        dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        folded: Sequence[Tuple[str, str]] = (),
        float32_modules: Sequence[str] = ()
    ) -> None:
        self.dtype = dtype
        self.channels_last = channels_last
        self.folded = list(folded)
        self.float32_modules = list(float32_modules)

    @property
    def is_fast(self) -> bool:
        return self.dtype is not None

    def autocast(self, device_type: str):
        """Autocast in the form's dtype, or a no-op for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def prepare(self, inputs: Tensor) -> Tensor:
        """The input in the form's layout (channels_last for 4-d)."""
        if self.channels_last and isinstance(inputs,
                                             Tensor) and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def describe(self) -> str:
        """One line for the log."""
        if self.dtype is None:
            return 'float32 (as its config builds it)'
        name = {torch.bfloat16: 'bf16', torch.float16: 'fp16'}[self.dtype]
        layout = ' + channels_last' if self.channels_last else ''
        islands = (f', {len(self.float32_modules)} modules without {name} '
                   'kernels in float32' if self.float32_modules else '')
        return (f'{name} autocast{layout} + {len(self.folded)} BatchNorm '
                'layers folded into their convolutions; outputs in float32'
                f'{islands}')


def make_fast(model: nn.Module,
              dtype: torch.dtype,
              probe: Optional[Callable[[], object]] = None,
              keep: Sequence[str] = (),
              outputs: Sequence[str] = (),
              float32_modules: Sequence[str] = (),
              channels_last: bool = True) -> TeacherForm:
    """Put a frozen eval-mode model in its fast form, in place.

    Args:
        model (nn.Module): The frozen model (eval mode, float32).
        dtype (torch.dtype): ``torch.bfloat16`` or ``torch.float16``.
        probe (callable, optional): One forward of ``model`` for
            :func:`fold_batchnorm`; None folds nothing.
        keep (Sequence[str]): Module paths whose own output must not change
            (the distilled modules): their convolutions are not folded.
        outputs (Sequence[str]): Module paths whose outputs leave the
            model's low-precision part (distilled modules, heads): they
            return float32 in the default layout. Missing paths are skipped.
        float32_modules (Sequence[str]): Module paths to run in float32 with
            autocast off (see :class:`Float32Forward`).
        channels_last (bool): Convert the weights (and, via
            :meth:`TeacherForm.prepare`, the input) to channels_last.

    Returns:
        TeacherForm: The form the model must now be run in.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f'make_fast needs bf16 or fp16, got {dtype}')
    folded = fold_batchnorm(model, probe, keep) if probe is not None else []
    if channels_last:
        model.to(memory_format=torch.channels_last)
    modules = dict(model.named_modules())
    for path in dict.fromkeys(outputs):
        if path in modules:
            modules[path].register_forward_hook(_float32_output_hook)
    for path in float32_modules:
        modules[path].forward = Float32Forward(modules[path])
    return TeacherForm(dtype, channels_last, folded, float32_modules)


def output_agreement(fast: Tensor,
                     reference: Tensor,
                     dim: int = 1) -> Dict[str, float]:
    """How closely fast logits follow the reference ones.

    Args:
        fast (Tensor): Logits of the fast form, any float dtype.
        reference (Tensor): The float32 (or float64) logits, same shape.
        dim (int): The class dimension. Defaults to 1.

    Returns:
        dict[str, float]: ``max_abs_diff``, ``max_abs_ref``, ``kl`` (mean
        over rows of softmax KL(reference || fast), float64) and
        ``top1_agreement`` (share of rows with the same argmax).
    """
    fast, reference = fast.double(), reference.double()
    log_p = torch.log_softmax(reference, dim)
    log_q = torch.log_softmax(fast, dim)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim)
    agree = fast.argmax(dim) == reference.argmax(dim)
    return dict(
        max_abs_diff=float((fast - reference).abs().max()),
        max_abs_ref=float(reference.abs().max()),
        kl=float(kl.mean()) if kl.numel() else math.nan,
        top1_agreement=float(agree.double().mean()))
