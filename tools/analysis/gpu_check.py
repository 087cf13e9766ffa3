"""DISTLoss on CUDA against the published formulation: time, launches, memory.

For the four shapes of ``tests/test_loss_policy.py`` it runs forward +
backward of mmdist's DISTLoss (GPU block policy, the CUDA default) and of
the reference of ``benchmark_loss.py`` on the GPU and prints per shape:

- median time of ``--runs`` runs after a warm-up, and the speed-up;
- CUDA kernel launches and top-level ``aten::`` ops of one forward +
  backward (``torch.profiler``);
- peak extra memory (``torch.cuda.max_memory_allocated``) and the ratio;
- the relative difference of the values and gradients.

Then a few correctness checks on the GPU (a batch of one passes no
intra-class gradient, fp16/bf16 inputs give a finite float32 loss).

Needs only torch with CUDA: mmdist's losses are loaded on their own,
bypassing ``mmdist/__init__.py`` (see :func:`import_losses`).

Usage:
    python tools/analysis/gpu_check.py [--runs 20] [--json out.json]
"""
import argparse
import json
import os
import statistics
import sys
import time
import types

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from benchmark_loss import reference_dist  # noqa: E402

DEVICE = 'cuda'

# name: (logits shape, activation); num_classes=None: every channel of a
# position is a column, as the authors lay dense heads out.
SHAPES = {
    'retinanet_p3 (2, 720, 100, 168) sigmoid': ((2, 720, 100, 168),
                                                'sigmoid'),
    'dense (403200, 80) sigmoid': ((403200, 80), 'sigmoid'),
    'cityscapes decode (2, 19, 128, 256) softmax': ((2, 19, 128, 256),
                                                    'softmax'),
    'roi (1024, 81) softmax': ((1024, 81), 'softmax'),
}


def import_losses():
    """Import ``mmdist.losses`` without ``mmdist/__init__.py``.

    The package's ``__init__`` imports MMEngine and the distillers (and
    through them MMDetection and friends); the losses need none of it but
    the ``MODELS`` registry's decorator. So ``mmdist`` is a bare package
    here, with the real registry when MMEngine is installed and otherwise a
    stub whose ``register_module`` returns the class unchanged.
    """
    package = types.ModuleType('mmdist')
    package.__path__ = [os.path.join(ROOT, 'mmdist')]
    sys.modules['mmdist'] = package
    try:
        import mmdist.registry  # noqa: F401
    except ImportError:
        registry = types.ModuleType('mmdist.registry')
        registry.MODELS = types.SimpleNamespace(
            register_module=lambda *args, **kwargs: (lambda cls: cls))
        sys.modules['mmdist.registry'] = registry
        print('MMEngine not installed: mmdist.losses loaded with a stub '
              'registry')
    import mmdist.losses
    return mmdist.losses


def step(fn, student, teacher):
    student = student.detach().requires_grad_()
    loss = fn(student, teacher)
    loss.backward()
    return loss.detach(), student.grad


def launches(fn, student, teacher):
    """(CUDA kernel launches, top-level aten ops) of one forward+backward."""
    with profile(activities=[ProfilerActivity.CPU,
                             ProfilerActivity.CUDA]) as prof:
        step(fn, student, teacher)
        torch.cuda.synchronize()
    kernels = ops = 0
    for event in prof.events():
        if 'LaunchKernel' in event.name:
            kernels += 1
        elif event.name.startswith('aten::'):
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith('aten::'):
                parent = parent.cpu_parent
            ops += parent is None
    return kernels, ops


def peak_memory(fn, student, teacher):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(fn, student, teacher)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def median_ms(fn, student, teacher, runs):
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(fn, student, teacher)
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def check_shape(losses, shape, activation, runs):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    student = torch.randn(shape, device=DEVICE, generator=gen)
    teacher = 2 * torch.randn(shape, device=DEVICE, generator=gen)
    impls = {
        'reference':
        lambda s, t: reference_dist(s, t, activation, None),
        'mmdist':
        losses.DISTLoss(activation=activation),
    }
    result = {}
    for name, fn in impls.items():
        step(fn, student, teacher)  # warm-up
        result[f'{name}_ms'] = median_ms(fn, student, teacher, runs)
        result[f'{name}_kernels'], result[f'{name}_ops'] = launches(
            fn, student, teacher)
        result[f'{name}_mb'] = peak_memory(fn, student, teacher) / 2**20
    ref_loss, ref_grad = step(impls['reference'], student, teacher)
    new_loss, new_grad = step(impls['mmdist'], student, teacher)
    result['value_rel_diff'] = float((new_loss - ref_loss).abs() /
                                     ref_loss.abs())
    result['grad_rel_diff'] = float((new_grad - ref_grad).norm() /
                                    ref_grad.norm())
    result['speedup'] = result['reference_ms'] / result['mmdist_ms']
    result['memory_ratio'] = result['mmdist_mb'] / result['reference_mb']
    result['kernel_ratio'] = (result['mmdist_kernels'] /
                              max(result['reference_kernels'], 1))
    return result


def correctness(losses):
    """Edge cases of the loss, on the GPU; returns failed check names."""
    failed = []
    for activation in ('softmax', 'sigmoid'):
        one = torch.randn(1, 80, device=DEVICE, requires_grad=True)
        losses.DISTLoss(beta=0., activation=activation)(
            one, torch.randn(1, 80, device=DEVICE)).backward()
        if not torch.equal(one.grad, torch.zeros_like(one.grad)):
            failed.append(f'batch of one, {activation}: gradient norm '
                          f'{float(one.grad.norm()):.3g}, expected 0')
        for dtype in (torch.float16, torch.bfloat16):
            s = torch.randn(64, 80, device=DEVICE).to(dtype)
            s.requires_grad_()
            loss = losses.DISTLoss(activation=activation)(
                s, torch.randn(64, 80, device=DEVICE).to(dtype))
            loss.backward()
            if not (loss.dtype == torch.float32 and bool(loss.isfinite())
                    and bool(s.grad.isfinite().all())):
                failed.append(f'{dtype} {activation}: loss {loss} '
                              f'({loss.dtype}), gradient finite: '
                              f'{bool(s.grad.isfinite().all())}')
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('gpu_check: CUDA is not available')
    losses = import_losses()
    print(f'DISTLoss forward+backward on {torch.cuda.get_device_name()} '
          f'(torch {torch.__version__}), median of {args.runs} runs after a '
          'warm-up; mmdist block policy '
          f"{losses.blocks.block_policy(torch.device(DEVICE))!r}")
    header = (f'{"shape":<46} {"ref ms":>8} {"mmdist ms":>9} {"speed-up":>8} '
              f'{"kernels ref/mmdist":>18} {"aten ops":>9} '
              f'{"MB ref/mmdist":>14} {"memory":>7} {"grad diff":>9}')
    print(header)
    print('-' * len(header))
    results = {}
    for name, (shape, activation) in SHAPES.items():
        r = check_shape(losses, shape, activation, args.runs)
        results[name] = r
        print(f'{name:<46} {r["reference_ms"]:8.2f} {r["mmdist_ms"]:9.2f} '
              f'{r["speedup"]:7.2f}x '
              f'{r["reference_kernels"]:>8}/{r["mmdist_kernels"]:<9} '
              f'{r["reference_ops"]:>4}/{r["mmdist_ops"]:<4} '
              f'{r["reference_mb"]:6.0f}/{r["mmdist_mb"]:<7.0f} '
              f'{r["memory_ratio"]:6.2f}x {r["grad_rel_diff"]:9.1e}')
        torch.cuda.empty_cache()
    failed = correctness(losses)
    print('correctness on CUDA:', 'ok' if not failed else '; '.join(failed))
    results['correctness_failures'] = failed
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
