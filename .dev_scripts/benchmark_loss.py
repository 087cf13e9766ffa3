"""Benchmark DISTLoss against the published formulation of the loss.

The reference is the published formulation, as the paper's authors and
MMRazor write it: activation, mean-centring, cosine similarity, and the
intra-class term through a transpose, with autograd doing the backward pass;
it is DISTLoss's specification (``mmdist/losses/dist_spec.py``) with
``floor=0`` and no weights. Both run
forward + backward on the same logits; the script prints the median time of
several runs after a warm-up, the peak extra memory of each implementation
(measured in its own fresh process), the ratios, and the relative difference
of the values and gradients.

``--policy cpu|gpu`` runs mmdist under that block policy (see
:mod:`mmdist.losses.blocks`) whatever the device, e.g. the GPU policy's
memory on a CPU; by default the device picks it.

On CUDA the times come from CUDA events and the memory from
``torch.cuda.max_memory_allocated``. :func:`time_steps` and
:func:`peak_extra_bytes` are shared with ``gpu_check.py``, the prepared GPU
check built on this script.

Usage:
    python .dev_scripts/benchmark_loss.py [--device cpu|cuda] [--runs 7]
        [--shapes dense seg] [--policy cpu|gpu]
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

# name: (rows-by-classes description, logits shape, activation, num_classes)
SHAPES = {
    # RetinaNet-like: 2 images at 1333x800, 9 anchors x 80 classes per
    # position over the five FPN levels, 403,200 rows of 80 classes.
    'dense': ('403,200 rows x 80 classes, sigmoid', (2, 9 * 80, 201600 // 9),
              'sigmoid', 80),
    # Segmentation at full resolution: 2 images at 512x1024, 19 classes.
    'seg': ('1,048,576 rows x 19 classes, softmax', (2, 19, 512, 1024),
            'softmax', None),
}


def published(student, teacher, activation, num_classes, tau=1.0):
    """The published formulation: DISTLoss's specification
    (:func:`mmdist.losses.dist_spec.dist_spec`) with ``floor=0`` and no
    weights, which runs exactly the published operations (float32, or
    float64 for float64 inputs: the accuracy yardstick)."""
    from mmdist.losses.dist_spec import dist_spec_loss
    return dist_spec_loss(
        student,
        teacher,
        activation=activation,
        tau=tau,
        num_classes=num_classes,
        floor=0.)


# Block policy forced on mmdist (--policy); None: the device's own.
POLICY = None


def mmdist_dist(student, teacher, activation, num_classes):
    from mmdist.losses import DISTLoss
    from mmdist.losses.blocks import force_block_policy
    loss = DISTLoss(activation=activation, num_classes=num_classes)
    with (force_block_policy(POLICY) if POLICY else contextlib.nullcontext()):
        return loss(student, teacher)


IMPLEMENTATIONS = {'reference': published, 'mmdist': mmdist_dist}


def make_inputs(shape_name, device):
    _, shape, activation, num_classes = SHAPES[shape_name]
    # Filled in place: no temporary raises the process's peak memory before
    # the measurement starts.
    gen = torch.Generator(device=device).manual_seed(0)
    student = torch.empty(shape, device=device).normal_(generator=gen)
    teacher = torch.empty(shape, device=device).normal_(std=2.0, generator=gen)
    return student, teacher, activation, num_classes


def step(impl, student, teacher, activation, num_classes):
    student = student.detach().requires_grad_()
    loss = IMPLEMENTATIONS[impl](student, teacher, activation, num_classes)
    loss.backward()
    return loss.detach(), student.grad


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def time_steps(steps, device, runs, warmup=1):
    """Time each callable of ``steps`` ``runs`` times, interleaved.

    Every callable runs ``warmup`` times first; then each round runs all of
    them once, in turn, so that they share the machine's state. On CUDA a
    pair of CUDA events brackets each call (the GPU idle before it, so the
    time includes the host's launches when the GPU waits on them);
    elsewhere ``time.perf_counter``.

    Args:
        steps (dict[str, callable]): Name to a callable of no arguments.
        device (str | torch.device): Where the callables compute.
        runs (int): Timed calls of each.
        warmup (int): Untimed calls of each before.

    Returns:
        dict[str, list[float]]: Name to its ``runs`` times in milliseconds.
    """
    cuda = torch.device(device).type == 'cuda'
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    events = {name: [] for name in steps}
    for _ in range(runs):
        for name, fn in steps.items():
            sync(device)
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events[name].append((start, end))
            else:
                begin = time.perf_counter()
                fn()
                times[name].append(1000 * (time.perf_counter() - begin))
    if cuda:
        torch.cuda.synchronize()
        times = {
            name: [start.elapsed_time(end) for start, end in pairs]
            for name, pairs in events.items()
        }
    return times


def peak_extra_bytes(fn, device):
    """Peak memory that ``fn()`` adds to what is allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak.
    CPU (Linux): the peak resident size (VmHWM) after resetting it to the
    current one. Exact in a fresh process (:func:`measure_memory`); in a
    process that ran before, memory the C library kept for reuse hides part
    of the growth.
    """
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # (getrusage's maxrss survives exec: it would report the parent's peak.)
    base = _status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    fn()
    return max(_status_kib('VmHWM') - base, 0) * 1024


def measure_memory(impl, shape_name, device):
    """Peak extra memory of one forward+backward, in this (fresh) process."""
    student, teacher, activation, num_classes = make_inputs(shape_name, device)
    # Import before the baseline: the package's import (MMEngine and
    # friends, ~90 MB resident) is not the loss's memory.
    import mmdist.losses.dist_spec  # noqa: F401

    # The inputs are allocated before, so the growth is what the loss adds.
    return peak_extra_bytes(
        lambda: step(impl, student, teacher, activation, num_classes), device)


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def memory_in_subprocess(impl, shape_name, device):
    policy = ['--policy', POLICY] if POLICY else []
    out = subprocess.run(
        [
            sys.executable, __file__, '--memory-child', impl, shape_name,
            '--device', device
        ] + policy,
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    return json.loads(out.stdout.strip().splitlines()[-1])['bytes']


def benchmark(shape_name, device, runs):
    student, teacher, activation, num_classes = make_inputs(shape_name, device)
    results = {}
    times = time_steps(
        {
            impl: (lambda impl=impl: step(impl, student, teacher, activation,
                                          num_classes))
            for impl in IMPLEMENTATIONS
        }, device, runs)
    ref_loss, ref_grad = step('reference', student, teacher, activation,
                              num_classes)
    new_loss, new_grad = step('mmdist', student, teacher, activation,
                              num_classes)
    results['value_rel_diff'] = float(
        (new_loss - ref_loss).abs() / ref_loss.abs())
    results['grad_rel_diff'] = float(
        (new_grad - ref_grad).norm() / ref_grad.norm())
    # Both float32 gradients against the float64 reference: how much of
    # their difference is float32 rounding, and whose.
    true_loss, true_grad = step('reference', student.double(),
                                teacher.double(), activation, num_classes)
    for impl, loss, grad in (('reference', ref_loss, ref_grad),
                             ('mmdist', new_loss, new_grad)):
        results[f'{impl}_grad_err_vs_f64'] = float(
            (grad.double() - true_grad).norm() / true_grad.norm())
        results[f'{impl}_value_err_vs_f64'] = float(
            (loss.double() - true_loss).abs() / true_loss.abs())
    del true_grad
    for impl in IMPLEMENTATIONS:
        results[f'{impl}_ms'] = statistics.median(times[impl])
        results[f'{impl}_mb'] = memory_in_subprocess(impl, shape_name,
                                                     device) / 2**20
    results['speedup'] = results['reference_ms'] / results['mmdist_ms']
    results['memory_ratio'] = results['mmdist_mb'] / max(
        results['reference_mb'], 1e-9)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--runs', type=int, default=7)
    parser.add_argument(
        '--shapes', nargs='+', default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument(
        '--policy',
        choices=['cpu', 'gpu'],
        help="mmdist's block policy (default: the device's)")
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--memory-child', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global POLICY
    POLICY = args.policy
    if args.memory_child:
        impl, shape_name = args.memory_child
        print(
            json.dumps(
                dict(bytes=measure_memory(impl, shape_name, args.device))))
        return

    policy = args.policy or ('cpu' if args.device == 'cpu' else 'gpu')
    print(f'DISTLoss forward+backward on {args.device} '
          f'(torch {torch.__version__}, {torch.get_num_threads()} threads), '
          f'mmdist block policy {policy!r}, median of {args.runs} runs after '
          'a warm-up')
    header = (f'{"shape":<40} {"reference":>18} {"mmdist":>18} '
              f'{"speed-up":>9} {"memory":>8} {"value diff":>11} '
              f'{"grad diff":>10}')
    print(header)
    print('-' * len(header))
    all_results = {}
    for name in args.shapes:
        r = benchmark(name, args.device, args.runs)
        all_results[name] = r
        print(f'{SHAPES[name][0]:<40} '
              f'{r["reference_ms"]:7.0f} ms {r["reference_mb"]:5.0f} MB '
              f'{r["mmdist_ms"]:7.0f} ms {r["mmdist_mb"]:5.0f} MB '
              f'{r["speedup"]:8.2f}x {r["memory_ratio"]:7.2f}x '
              f'{r["value_rel_diff"]:11.1e} {r["grad_rel_diff"]:10.1e}')
    print('memory = peak extra memory of one forward+backward, each '
          'implementation in its own process; ratios are mmdist / reference '
          '(memory) and reference / mmdist (speed-up); diffs are relative '
          '(gradients by norm)')
    print('\nagainst the float64 reference:')
    for name, r in all_results.items():
        print(f'{SHAPES[name][0]:<40} value error: reference '
              f'{r["reference_value_err_vs_f64"]:.1e}, mmdist '
              f'{r["mmdist_value_err_vs_f64"]:.1e}; gradient error: '
              f'reference {r["reference_grad_err_vs_f64"]:.1e}, mmdist '
              f'{r["mmdist_grad_err_vs_f64"]:.1e}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(all_results, f, indent=2)


if __name__ == '__main__':
    main()
