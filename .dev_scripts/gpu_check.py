"""The prepared GPU check: DISTLoss and the teacher's fast form on one device.

Built on ``benchmark_loss.py`` (its reference formulation, its interleaved
timer and its peak-memory measure). On the shapes users train with it runs
forward + backward of mmdist's DISTLoss and of the published formulation
and reports per shape:

- the median time of ``--runs`` interleaved runs after a warm-up (CUDA
  events on CUDA) and the ratio mmdist / reference;
- the peak extra memory of one forward + backward
  (``torch.cuda.max_memory_allocated`` on CUDA) and the ratio;
- kernel launches of one forward + backward (``torch.profiler``; on the CPU
  the top-level ``aten::`` ops, which a GPU would launch);
- the relative difference of the values and gradients, and the path
  DISTLoss took per level (one pass or streamed, by size).

Shapes (CUDA; ``--device cpu`` runs the same cases at small sizes, so that a
test keeps the script working): the five RetinaNet levels P3-P7 in the
authors' layout (every channel of a position a column) for 2 images at
1333x800, one loss per level summed as a training step does; the dense
403,200 x 80 rows of ``benchmark_loss.py``; the Cityscapes decode head at
1/8 and at full resolution; 1024 RoIs x 81 classes; ImageNet 256 x 1000 at
tau 1 and 4.

Then the teacher: a ResNet-50-sized network in pure torch with non-trivial
BatchNorm statistics and affine parameters, forward under ``torch.no_grad``
in fp32, under fp16 / bf16 autocast alone, and in the fast form that
``teacher_precision='bf16'|'fp16'`` builds
(``mmdist.distillers.fast_form``: BatchNorm folded into the convolutions,
channels_last, autocast; ``folded fp32`` is the same without autocast, to
show the folding exact). Per row: the time and its ratio to fp32, the peak
memory, and against strict fp32 (TF32 off) the largest logit difference,
the mean softmax KL and the top-1 agreement; and edge cases of the loss on
the device (a batch of one, fp16/bf16 logits).

Needs only torch: mmdist's losses and fast form are imported from this
checkout past the package ``__init__`` files, which import OpenMMLab (see
:func:`bare_packages`), with MMEngine's registry when MMEngine imports and
a stub otherwise.

Usage:
    python .dev_scripts/gpu_check.py [--device cuda|cpu] [--runs 20]
        [--policy cpu|gpu] [--json FILE]

Writes ``gpu_check.json`` to ``$OUT`` when that is set and ``--json`` is
not given. Exits 1 when an edge case fails; the targets (mmdist at least as
fast everywhere, at most 0.5x the memory on the dense and full-resolution
segmentation shapes) are reported, not enforced.
"""
import argparse
import contextlib
import copy
import ctypes
import datetime
import functools
import glob
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import benchmark_loss  # noqa: E402


class Case(NamedTuple):
    """One loss row: logits of one or more levels, summed like a step."""
    levels: List[Tuple[int, ...]]
    activation: str
    num_classes: Optional[int] = None
    tau: float = 1.0
    memory_target: bool = False  # held to 0.5x the reference's memory


# RetinaNet, 2 images at 1333x800 (padded to 1344x800), 9 anchors x 80
# classes = 720 channels at strides 8..128.
RETINANET_LEVELS = [(2, 720, 100, 168), (2, 720, 50, 84), (2, 720, 25, 42),
                    (2, 720, 13, 21), (2, 720, 7, 11)]

CUDA_CASES = {
    'retinanet_p3-p7':
    Case(RETINANET_LEVELS, 'sigmoid'),
    'dense':
    Case([benchmark_loss.SHAPES['dense'][1]],
         'sigmoid',
         benchmark_loss.SHAPES['dense'][3],
         memory_target=True),
    'cityscapes_1/8':
    Case([(2, 19, 128, 256)], 'softmax'),
    'cityscapes_full':
    Case([(2, 19, 512, 1024)], 'softmax', memory_target=True),
    'roi':
    Case([(1024, 81)], 'softmax'),
    'imagenet_tau1':
    Case([(256, 1000)], 'softmax', tau=1.0),
    'imagenet_tau4':
    Case([(256, 1000)], 'softmax', tau=4.0),
}

# The same cases at sizes a CPU test runs in seconds (each logit tensor
# over 128 KiB, so that its memory shows; see return_freed_memory_to_os).
CPU_LEVELS = {
    'retinanet_p3-p7': [(2, 720, 13, 21), (2, 720, 7, 11), (2, 720, 4, 6),
                        (2, 720, 2, 3), (2, 720, 1, 2)],
    'dense': [(2, 720, 350)],
    'cityscapes_1/8': [(2, 19, 32, 64)],
    'cityscapes_full': [(2, 19, 64, 128)],
}
CPU_CASES = {
    name: case._replace(levels=CPU_LEVELS.get(name, case.levels))
    for name, case in CUDA_CASES.items()
}

# Teacher for the autocast rows: (batch, image size, base width).
CUDA_TEACHER = (32, 224, 64)
CPU_TEACHER = (2, 64, 8)
AUTOCAST_MODES = ('fp32 strict', 'fp32', 'fp16', 'bf16')
# The fast form as teacher_precision builds it (fp16: CUDA only, the
# option refuses it on a CPU).
FAST_MODES = ('folded fp32', 'fast bf16', 'fast fp16')


def bare_packages(*names: str) -> None:
    """Make the packages ``names`` (``mmdist`` and subpackages) importable
    from this checkout without running their ``__init__.py``.

    mmdist's package ``__init__`` files import the distillers and through
    them MMDetection and friends, which the GPU machine does not have; the
    modules this check needs (the losses, the fast form) do not. A package
    already imported (a test process that imported mmdist) is kept.
    """
    for name in names:
        if name in sys.modules:
            continue
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(ROOT, *name.split('.'))]
        sys.modules[name] = package
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(sys.modules[parent], child, package)


def import_losses():
    """Import ``mmdist.losses`` with ``mmdist`` a bare package.

    The losses need nothing of the package but the ``MODELS`` registry's
    decorator: the real registry when MMEngine imports, otherwise a stub
    whose ``register_module`` returns the class unchanged.

    Returns:
        tuple[module, str]: ``mmdist.losses`` and which registry it uses.
    """
    bare_packages('mmdist')
    try:
        import mmengine

        import mmdist.registry  # noqa: F401
        registry = (f'mmengine {mmengine.__version__} from '
                    f'{os.path.dirname(os.path.dirname(mmengine.__file__))}')
    except ImportError as error:
        stub = types.ModuleType('mmdist.registry')
        stub.MODELS = types.SimpleNamespace(
            register_module=lambda *args, **kwargs: (lambda cls: cls))
        sys.modules['mmdist.registry'] = stub
        registry = f'stub (MMEngine does not import: {error})'
    import mmdist.losses
    return mmdist.losses, registry


def import_fast_form():
    """``mmdist.distillers.fast_form``, the module the distiller builds its
    fast teacher with, imported past the package ``__init__`` files (see
    :func:`bare_packages`)."""
    bare_packages('mmdist', 'mmdist.distillers')
    return importlib.import_module('mmdist.distillers.fast_form')


def case_inputs(case, device):
    """(student, teacher) per level, filled in place from a fixed seed."""
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = []
    for shape in case.levels:
        student = torch.empty(shape, device=device).normal_(generator=gen)
        teacher = torch.empty(
            shape, device=device).normal_(
                std=2.0, generator=gen)
        pairs.append((student, teacher))
    return pairs


def loss_step(fn, pairs):
    """Forward + backward of the sum of ``fn`` over the levels."""
    students = [s.detach().requires_grad_() for s, _ in pairs]
    loss = fn(students[0], pairs[0][1])
    for student, (_, teacher) in zip(students[1:], pairs[1:]):
        loss = loss + fn(student, teacher)
    loss.backward()
    return loss.detach(), [s.grad for s in students]


def count_launches(fn, device):
    """Launches of one ``fn()`` under the profiler.

    Returns:
        tuple[int | None, int]: CUDA kernel launches (the runtime's launch
        calls, else the kernels the GPU ran; None off CUDA or where the
        profiler cannot trace CUDA) and top-level ``aten::`` ops (no
        ``aten::`` ancestor; backward ops sit under autograd's engine
        events).
    """
    cuda = torch.device(device).type == 'cuda'
    activities = [ProfilerActivity.CPU]
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    try:
        with profile(activities=activities) as prof:
            fn()
            if cuda:
                torch.cuda.synchronize()
    except RuntimeError as error:
        if not cuda:
            raise
        print(f'gpu_check: the profiler cannot trace CUDA ({error}); '
              'counting aten ops instead')
        return None, count_launches(fn, 'cpu')[1]
    launches = kernels = ops = 0
    for event in prof.events():
        if 'LaunchKernel' in event.name:  # cudaLaunchKernel(ExC), cuLaunch..
            launches += 1
        elif event.device_type == DeviceType.CUDA:
            kernels += 'memcpy' not in event.name.lower()
        elif event.name.startswith('aten::'):
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith('aten::'):
                parent = parent.cpu_parent
            ops += parent is None
    return ((launches or kernels) if cuda else None), ops


def rel_diff(new, ref):
    new = torch.cat([t.flatten().double() for t in new])
    ref = torch.cat([t.flatten().double() for t in ref])
    return float((new - ref).norm() / ref.norm())


def measure_case(losses, case, device, runs, warmup):
    pairs = case_inputs(case, device)
    impls = {
        'reference':
        functools.partial(
            benchmark_loss.published,
            activation=case.activation,
            num_classes=case.num_classes,
            tau=case.tau),
        # The paper's form (floor=0), so that values and gradients can be
        # held to the published formulation's.
        'mmdist':
        losses.DISTLoss(
            activation=case.activation,
            num_classes=case.num_classes,
            tau=case.tau,
            floor=0.),
    }
    steps = {
        name: functools.partial(loss_step, fn, pairs)
        for name, fn in impls.items()
    }
    times = benchmark_loss.time_steps(steps, device, runs, warmup=warmup)
    row = dict(
        shape=' + '.join(str(tuple(shape)) for shape in case.levels),
        activation=case.activation,
        num_classes=case.num_classes,
        tau=case.tau,
        elements=sum(math.prod(s) for s in case.levels))
    for name, step in steps.items():
        row[f'{name}_ms'] = statistics.median(times[name])
        row[f'{name}_ms_min'] = min(times[name])
        row[f'{name}_ms_max'] = max(times[name])
        row[f'{name}_mb'] = benchmark_loss.peak_extra_bytes(step,
                                                            device) / 2**20
        kernels, ops = count_launches(step, device)
        row[f'{name}_launches'] = ops if kernels is None else kernels
        row['launches_counted'] = ('aten ops'
                                   if kernels is None else 'CUDA kernels')
        row[f'{name}_aten_ops'] = ops
    ref_loss, ref_grads = steps['reference']()
    new_loss, new_grads = steps['mmdist']()
    row['value_rel_diff'] = rel_diff([new_loss], [ref_loss])
    row['grad_rel_diff'] = rel_diff(new_grads, ref_grads)
    row['time_ratio'] = row['mmdist_ms'] / row['reference_ms']
    # One pass or streamed (mmdist.losses.dist.fits_one_pass), per level.
    from mmdist.losses.dist import fits_one_pass
    row['mmdist_path'] = ' + '.join(
        'one pass' if fits_one_pass(student.view(*student.shape[:2], -1)
                                    ) else 'streamed' for student, _ in pairs)
    row['memory_ratio'] = row['mmdist_mb'] / max(row['reference_mb'], 1e-6)
    row['memory_target'] = case.memory_target
    return row


# ------------------------------------------------------------ the teacher
class Bottleneck(nn.Module):
    """ResNet's bottleneck block (1x1, 3x3 with the stride, 1x1 x4)."""

    def __init__(self, in_channels, width, stride):
        super().__init__()
        out_channels = 4 * width
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return torch.relu(self.layers(x) + self.shortcut(x))


class ResNet50Like(nn.Module):
    """ResNet-50's layout in pure torch (25.6M parameters at ``width=64``):
    the teacher of the autocast rows, no torchvision or MMCV needed."""

    def __init__(self, width=64, depths=(3, 4, 6, 3), num_classes=1000):
        super().__init__()
        layers = [
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)
        ]
        in_channels = width
        for stage, depth in enumerate(depths):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(Bottleneck(in_channels, width << stage, stride))
                in_channels = 4 * (width << stage)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def calibrated_teacher(device, batch, size, width):
    """A randomly initialised teacher whose BatchNorm statistics are those
    of its input, so that its activations and logits have a trained
    network's scale (fresh running statistics would let them grow from
    block to block), and whose BatchNorm affine parameters are not the
    identity, so that folding them has something to get wrong."""
    torch.manual_seed(0)
    model = ResNet50Like(width).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    with torch.no_grad(), tf32(False):
        model.train()(images)
    return model.eval(), images


@contextlib.contextmanager
def tf32(enabled):
    """TF32 for CUDA convolutions and matrix products on or off."""
    old = (torch.backends.cudnn.allow_tf32,
           torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = old


def teacher_forward(model, images, mode):
    """The teacher's forward under ``torch.no_grad``: strict fp32 (TF32
    off), fp32, or fp16 / bf16 autocast alone."""
    context = contextlib.nullcontext()
    if mode == 'fp32 strict':
        context = tf32(False)
    elif mode in ('fp16', 'bf16'):
        dtype = torch.float16 if mode == 'fp16' else torch.bfloat16
        context = torch.autocast(images.device.type, dtype=dtype)
    with torch.no_grad(), context:
        return model(images)


def fast_copy(fast_form, model, mode, probe_input, label, **kwargs):
    """A copy of ``model`` in the form ``teacher_precision`` makes of
    ``mode`` (``'fast bf16'`` or ``'fast fp16'``) on ``probe_input``'s
    device (:func:`fast_form.make_fast` after
    :func:`fast_form.resolve_precision`: a bf16 request on hardware without
    bf16 falls back to fp32, as the distiller does, and the note says so).

    Args:
        fast_form (module): ``mmdist/distillers/fast_form.py``.
        model (nn.Module): The float32 teacher (not changed).
        mode (str): ``'fast bf16'`` or ``'fast fp16'``.
        probe_input (Tensor): One input for the folding probe forward.
        label (str): Names the row in the message of a refused mode.
        **kwargs: ``make_fast``'s ``keep`` and ``outputs``.

    Returns:
        tuple | None: ``(copy, form, note)``, or None where the mode is
        refused (fp16 on a CPU; printed with ``label``).
    """
    try:
        dtype, note = fast_form.resolve_precision(mode.split()[-1],
                                                  probe_input.device)
    except ValueError as error:
        print(f'gpu_check: {label} left out: {error}')
        return None
    teacher = copy.deepcopy(model)
    form = fast_form.TeacherForm()
    if dtype is not None:
        form = fast_form.make_fast(teacher, dtype,
                                   functools.partial(teacher, probe_input),
                                   **kwargs)
    return teacher, form, note or form.describe()


def fast_teachers(fast_form, model, images):
    """The fast forms of ``model``, each on its own copy:
    ``{mode: (forward, note)}``.

    ``fast bf16`` / ``fast fp16`` are the forms of :func:`fast_copy` (fp16
    on a CPU is refused and the row left out). ``folded fp32`` is the same
    folding and channels_last without autocast."""
    modes = {}
    for mode in FAST_MODES:
        if mode == 'folded fp32':
            teacher = copy.deepcopy(model)
            folded = fast_form.fold_batchnorm(
                teacher, functools.partial(teacher, images[:1]))
            teacher.to(memory_format=torch.channels_last)
            form = fast_form.TeacherForm(None, True, folded)
            note = f'{len(folded)} BatchNorm layers folded + channels_last'
        else:
            made = fast_copy(
                fast_form, model, mode, images[:1], mode, outputs=['fc'])
            if made is None:
                continue
            teacher, form, note = made
        modes[mode] = (functools.partial(fast_forward, teacher, form,
                                         images), note)
    return modes


def fast_forward(model, form, images):
    """A forward as the distiller runs its teacher: the form's input
    layout and autocast, no gradients."""
    with torch.no_grad(), form.autocast(images.device.type):
        return model(form.prepare(images))


def measure_autocast(device, runs, warmup, teacher_input=None):
    batch, size, width = CUDA_TEACHER if device == 'cuda' else CPU_TEACHER
    if teacher_input:
        batch, size = teacher_input
    model, images = calibrated_teacher(device, batch, size, width)
    fast_form = import_fast_form()
    steps = {
        mode: functools.partial(teacher_forward, model, images, mode)
        for mode in AUTOCAST_MODES
    }
    notes = {}
    for mode, (step, note) in fast_teachers(fast_form, model, images).items():
        steps[mode], notes[mode] = step, note
    times = benchmark_loss.time_steps(steps, device, runs, warmup=warmup)
    strict = steps['fp32 strict']().double()
    rows = {}
    for mode, step in steps.items():
        logits = step().double()
        agreement = fast_form.output_agreement(logits, strict)
        rows[mode] = dict(
            shape=f'ResNet-50-like width {width}, ({batch}, 3, {size}, '
            f'{size}) -> {tuple(logits.shape)}',
            ms=statistics.median(times[mode]),
            ms_min=min(times[mode]),
            ms_max=max(times[mode]),
            mb=benchmark_loss.peak_extra_bytes(step, device) / 2**20,
            max_logit_diff=agreement['max_abs_diff'],
            max_abs_logit=agreement['max_abs_ref'],
            kl=agreement['kl'],
            top1_agreement=agreement['top1_agreement'],
            logits_dtype=str(step().dtype).replace('torch.', ''))
        if mode in notes:
            rows[mode]['form'] = notes[mode]
    for row in rows.values():
        row['time_ratio'] = row['ms'] / rows['fp32']['ms']
    return rows


def flat_outputs(outputs):
    """A traced head's outputs (a tensor, or tuples of per-level lists) as
    one flat list of float32 tensors on the CPU."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.float().cpu()]
    return [t for item in outputs for t in flat_outputs(item)]


def run_form(model, form, batch, mode):
    """One forward of ``model`` in ``form`` (strict fp32: TF32 off), no
    gradients."""
    context = tf32(False) if mode == 'fp32 strict' else (
        contextlib.nullcontext())
    with torch.no_grad(), context, form.autocast(batch.device.type):
        return model(form.prepare(batch))


def trained_teachers(directory, device, runs, warmup, out_dir):
    """Trained teachers exported by ``.dev_scripts/trained_teacher_gpu.py
    export`` (a ``torch.fx`` module of plain torch layers and the split's
    uint8 images): each runs the whole split in strict fp32 (TF32 off) and
    in the fast forms ``teacher_precision`` builds; the head outputs of
    every form go to ``out_dir/<name>.<form>.out.pt`` for
    ``trained_teacher_gpu.py evaluate`` to score with the stock metrics,
    and the time of one batch (median of ``runs``) and its ratio to fp32
    strict are returned.

    Args:
        directory (str): Folder of the exported ``<name>.pt`` files.
        device (str): ``'cuda'`` or ``'cpu'``.
        runs (int): Timed runs of one batch per form.
        warmup (int): Untimed runs before.
        out_dir (str): Where the ``<name>.<form>.out.pt`` files go.

    Returns:
        dict: ``'<name> <form>'`` to its time, time ratio, largest
        difference of the distilled outputs to fp32 strict, form and batch.
    """
    os.makedirs(out_dir, exist_ok=True)
    fast_form = import_fast_form()
    rows = {}
    for path in sorted(glob.glob(os.path.join(directory, '*.pt'))):
        if path.endswith('.out.pt'):
            continue
        name = os.path.basename(path)[:-3]
        saved = torch.load(path, weights_only=False)
        module = saved['module'].to(device).eval()
        images = saved['images'].to(device)
        size = saved['batch_size']
        chunks = list(images.split(size))
        forms = {'fp32 strict': (module, fast_form.TeacherForm())}
        notes = {}
        for mode in ('fast bf16', 'fast fp16'):
            made = fast_copy(
                fast_form,
                module,
                mode,
                chunks[0][:1],
                f'{name} {mode}',
                keep=saved['distilled'],
                outputs=saved['outputs'])
            if made is not None:
                forms[mode], notes[mode] = made[:2], made[2]

        outputs, steps = {}, {}
        for mode, (model, form) in forms.items():
            per_batch = [
                flat_outputs(run_form(model, form, c, mode)) for c in chunks
            ]
            outputs[mode] = [torch.cat(parts) for parts in zip(*per_batch)]
            steps[mode] = functools.partial(run_form, model, form, chunks[0],
                                            mode)
        times = benchmark_loss.time_steps(steps, device, runs, warmup=warmup)
        # One file per form: a detector's outputs for the split are about
        # 11 MB, and the device returns files of at most 16 MiB.
        for mode in forms:
            torch.save(
                dict(
                    form=mode,
                    outputs=outputs[mode],
                    ms=statistics.median(times[mode]),
                    distilled_outputs=saved['distilled_outputs'],
                    device=str(device),
                    config=saved['config']),
                os.path.join(out_dir,
                             f"{name}.{mode.replace(' ', '_')}.out.pt"))
        reference = outputs['fp32 strict']
        for mode in forms:
            rows[f'{name} {mode}'] = dict(
                ms=statistics.median(times[mode]),
                time_ratio=statistics.median(times[mode]) /
                statistics.median(times['fp32 strict']),
                max_abs_diff=max(
                    float((outputs[mode][i] - reference[i]).abs().max())
                    for i in saved['distilled_outputs']),
                form=notes.get(mode, forms[mode][1].describe()),
                batch=tuple(chunks[0].shape))
            print(f'trained {name} {mode}: {rows[f"{name} {mode}"]}')
    return rows


def edge_cases(losses, device):
    """Edge cases of the loss on ``device``; returns the failed ones."""
    failed = []
    for activation in ('softmax', 'sigmoid'):
        one = torch.randn(1, 80, device=device, requires_grad=True)
        intra_only = losses.DISTLoss(beta=0., activation=activation)
        intra_only(one, torch.randn(1, 80, device=device)).backward()
        if not torch.equal(one.grad, torch.zeros_like(one.grad)):
            failed.append(f'batch of one, {activation}: gradient norm '
                          f'{float(one.grad.norm()):.3g}, expected 0')
        loss_fn = losses.DISTLoss(activation=activation)
        for dtype in (torch.float16, torch.bfloat16):
            student = torch.randn(64, 80, device=device).to(dtype)
            teacher = torch.randn(64, 80, device=device).to(dtype)
            student.requires_grad_()
            loss = loss_fn(student, teacher)
            loss.backward()
            finite = bool(student.grad.isfinite().all())
            if not (loss.dtype == torch.float32 and bool(loss.isfinite())
                    and finite):
                failed.append(f'{dtype} {activation}: loss {float(loss)} '
                              f'({loss.dtype}), gradient finite: {finite}')
    failed += floor_cases(losses, device)
    return failed


def floor_cases(losses, device):
    """Stable DIST on ``device``: at a constant student (64 x 100 logits,
    teacher spread 3) the default loss's gradient is within 100x
    cross-entropy's for the shipped (beta, gamma, tau) and equals the CPU's;
    returns the failed cases."""
    failed = []
    teacher = 3 * torch.randn(
        64, 100, generator=torch.Generator().manual_seed(0))
    labels = teacher.argmax(1)
    for beta, gamma, tau in ((1., 1., 1.), (2., 2., 1.), (2., 2., 4.)):
        grads = {}
        for where in ('cpu', device):
            student = torch.zeros(64, 100, device=where, requires_grad=True)
            losses.DISTLoss(
                beta=beta, gamma=gamma, tau=tau)(student,
                                                 teacher.to(where)).backward()
            grads[where] = student.grad.cpu()
        student = torch.zeros(64, 100, requires_grad=True)
        torch.nn.functional.cross_entropy(student, labels).backward()
        ratio = float(grads[device].norm() / student.grad.norm())
        diff = float(
            (grads[device] - grads['cpu']).norm() / grads['cpu'].norm())
        print(f'stable DIST {beta:g}/{gamma:g}/{tau:g} on {device}: '
              f'constant student, gradient {ratio:.3g}x cross-entropy\'s, '
              f'relative difference to the CPU {diff:.1e}')
        if not ratio <= 100 or not diff < 1e-4:
            failed.append(f'stable DIST {beta:g}/{gamma:g}/{tau:g}: '
                          f'{ratio:.3g}x cross-entropy, {diff:.1e} from CPU')
    return failed


def return_freed_memory_to_os():
    """CPU runs: have glibc map every block of 128 KiB or more on its own
    and unmap it when freed (a fixed threshold, not the adaptive one), so
    the resident-size peak of :func:`peak_extra_bytes` sees each step's
    allocations even in a process that ran steps before."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def print_tables(report):
    loss = report['loss']
    kernels = all(r['launches_counted'] == 'CUDA kernels'
                  for r in loss.values())
    unit = 'kernels' if kernels else 'aten ops'
    header = (f'{"loss":<16} {"shape":<44} {"ref ms":>8} {"mmdist ms":>9} '
              f'{"ratio":>6} {"ref MB":>8} {"mmdist MB":>9} {"ratio":>6} '
              f'{unit + " ref/mmdist":>20} {"grad diff":>9}')
    print(header)
    print('-' * len(header))
    for name, r in loss.items():
        shape = r['shape']
        if len(shape) > 44:
            shape = shape[:41] + '...'
        print(f'{name:<16} {shape:<44} {r["reference_ms"]:8.3f} '
              f'{r["mmdist_ms"]:9.3f} {r["time_ratio"]:5.2f}x '
              f'{r["reference_mb"]:8.1f} {r["mmdist_mb"]:9.1f} '
              f'{r["memory_ratio"]:5.2f}x '
              f'{r["reference_launches"]:>10}/{r["mmdist_launches"]:<9} '
              f'{r["grad_rel_diff"]:9.1e}')
    print('ratio = mmdist / reference (time: median of the runs; memory: '
          'peak extra memory of one forward + backward)')
    if 'retinanet_p3-p7' in loss:
        print(f'retinanet_p3-p7 = one loss per level, summed: '
              f'{loss["retinanet_p3-p7"]["shape"]}')
    print()
    if not report['autocast']:
        return
    header = (f'{"teacher form":<16} {"ms":>8} {"ratio":>6} {"MB":>8} '
              f'{"max |logit diff|":>16} {"max |logit|":>11} '
              f'{"mean KL":>9} {"top-1 agree":>11}')
    print(next(iter(report['autocast'].values()))['shape'])
    print(header)
    print('-' * len(header))
    for mode, r in report['autocast'].items():
        print(f'{mode:<16} {r["ms"]:8.3f} {r["time_ratio"]:5.2f}x '
              f'{r["mb"]:8.1f} {r["max_logit_diff"]:16.2e} '
              f'{r["max_abs_logit"]:11.2f} {r["kl"]:9.2e} '
              f'{r["top1_agreement"]:11.4f}')
    for mode, r in report['autocast'].items():
        if 'form' in r:
            print(f'{mode}: {r["form"]}')
    print("teacher forward under no_grad (teacher_precision's fast form: "
          "mmdist/distillers/fast_form.py); ratio against 'fp32' (torch's "
          "defaults: TF32 convolutions on CUDA); logit differences, softmax "
          "KL(strict || row) and top-1 agreement against 'fp32 strict' "
          "(TF32 off)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument(
        '--runs',
        type=int,
        default=20,
        help='timed runs per measurement (20 or more on CUDA)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument(
        '--teacher-input',
        type=int,
        nargs=2,
        metavar=('BATCH', 'SIZE'),
        help='images per forward and their side for the teacher rows '
        '(default 32 224 on CUDA)')
    parser.add_argument(
        '--teacher-only',
        action='store_true',
        help='measure only the teacher rows (another input size)')
    parser.add_argument(
        '--trained',
        metavar='DIR',
        help='also run the trained teachers exported to DIR by '
        '.dev_scripts/trained_teacher_gpu.py (outputs to the --json '
        'folder, else $OUT, else the working directory)')
    parser.add_argument(
        '--policy',
        choices=['cpu', 'gpu'],
        help="mmdist's block policy (default: the device's)")
    parser.add_argument(
        '--json',
        help='write the results here (default: '
        '$OUT/gpu_check.json when OUT is set)')
    args = parser.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('gpu_check: CUDA is not available (--device cpu runs the '
                 'small CPU version)')
    started = time.perf_counter()
    if args.device == 'cpu':
        return_freed_memory_to_os()
    losses, registry = import_losses()
    from mmdist.losses.blocks import block_policy, force_block_policy
    device = torch.device(args.device)
    policy = args.policy or block_policy(device)
    name = (
        torch.cuda.get_device_name() if args.device == 'cuda' else
        platform.processor() or platform.machine())
    report = dict(
        device=f'{args.device}: {name}',
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        date=datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec='seconds'),
        runs=args.runs,
        warmup=args.warmup,
        policy=policy,
        registry=registry,
    )
    print(f'gpu_check on {report["device"]}, torch {torch.__version__} '
          f'(CUDA {torch.version.cuda}), Python {report["python"]}; mmdist '
          f'block policy {policy!r}, registry: {registry}; median of '
          f'{args.runs} runs after {args.warmup} warm-up runs')
    cases = CUDA_CASES if args.device == 'cuda' else CPU_CASES
    # One failing part (a bug, out of memory) must not cost the others'
    # numbers: the check runs once on a lent machine.
    errors = report['errors'] = {}

    def attempt(part, fn, *fn_args):
        try:
            return fn(*fn_args)
        except Exception as error:
            errors[part] = f'{type(error).__name__}: {error}'
            print(f'gpu_check: {part} failed: {errors[part]}')
            return None
        finally:
            if args.device == 'cuda':
                torch.cuda.empty_cache()

    report['loss'] = {}
    if args.teacher_only:
        cases = {}
    with force_block_policy(policy):
        for case_name, case in cases.items():
            row = attempt(case_name, measure_case, losses, case, args.device,
                          args.runs, args.warmup)
            if row is not None:
                report['loss'][case_name] = row
        report['edge_case_failures'] = [] if args.teacher_only else (
            attempt('edge cases', edge_cases, losses, args.device) or [])
    report['autocast'] = attempt('autocast', measure_autocast, args.device,
                                 args.runs, args.warmup,
                                 args.teacher_input) or {}
    if args.trained:
        out_dir = os.path.dirname(args.json or '') or os.environ.get(
            'OUT', '.')
        report['trained'] = attempt('trained teachers', trained_teachers,
                                    args.trained, args.device, args.runs,
                                    args.warmup, out_dir) or {}
    print()
    print_tables(report)
    slow = [n for n, r in report['loss'].items() if r['time_ratio'] > 1]
    heavy = [
        n for n, r in report['loss'].items()
        if r['memory_target'] and r['memory_ratio'] > 0.5
    ]
    report['targets'] = dict(
        slower_than_reference=slow, over_half_memory=heavy)
    print(f'\ntargets: mmdist at least as fast everywhere: '
          f'{"yes" if not slow else "no, " + ", ".join(slow)}; at most 0.5x '
          'the memory on dense and cityscapes_full: '
          f'{"yes" if not heavy else "no, " + ", ".join(heavy)}')
    failed = report['edge_case_failures']
    print(f'edge cases on {args.device}:',
          'ok' if not failed else '; '.join(failed))
    if errors:
        print('failed parts:',
              '; '.join(f'{k}: {v}' for k, v in errors.items()))
    report['seconds'] = time.perf_counter() - started
    print(f'gpu_check took {report["seconds"]:.0f} s')
    path = args.json
    if path is None and os.environ.get('OUT'):
        path = os.path.join(os.environ['OUT'], 'gpu_check.json')
    if path:
        with open(path, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'results written to {path}')
    sys.exit(1 if failed or errors else 0)


if __name__ == '__main__':
    main()
