"""Benchmark the distiller's training step against its parts.

For each model pair the script times, on the same batch:

- the student's own training step (forward, loss, backward, update),
- the teacher's minimal forward (what the distiller runs for it),
- the distiller's training step,

and prints ``distill / (student + teacher minimal)`` (the overhead of the
distiller itself: hooks, renormalisation, the loss). For the two-stage pair
it also times the teacher's full ``loss()`` (RPN, sampler, all heads and
losses), which a distiller that simply ran the teacher would pay.

With ``--fast`` every pair is also built with ``teacher_precision='bf16'``
(the teacher's fast form) and the table gives, per run, the teacher's
minimal forward float32 / fast and the whole distillation step over the
student's own step, with the float32 teacher and with the fast one.

``--teachers`` times the minimal forward of every shipped teacher alone,
float32 against the fast form (random weights, one image of the stated
size), and prints the speed-ups. ``--compile`` measures ``torch.compile``
on top of the fast form once (torchvision's ResNet-50, 1x3x224x224): the
first call's time, eager / compiled and the break-even forward count.

``--count`` counts instead of timing: the FLOPs and the dispatched ATen
operators (about one kernel launch each on a GPU) of each part, and their
ratios; deterministic, so one call says what a timing on a noisy machine
cannot. ``--queries KEY=VALUE ...`` sets options of the DINO pairs' shared
queries (``num_random``, ``num_teacher``, ``layers``).

Timings are medians of ``--runs`` interleaved runs after a warm-up, in one
process; the ratios are computed per run and printed as median and
quartiles, so the spread of this machine's noise is visible beside them.

Usage:
    python .dev_scripts/benchmark_step.py [--pairs det seg two-stage]
        [--runs 10] [--fast]
    python .dev_scripts/benchmark_step.py --teachers [--runs 3]
    python .dev_scripts/benchmark_step.py --compile [--runs 5]
    python .dev_scripts/benchmark_step.py --count --pairs dino-demo
        [--queries num_random=50 num_teacher=50]
"""
import argparse
import contextlib
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import mmdist  # noqa: F401
from mmdist.distillers import load_teacher_config
from mmdist.testing import strip_pretrained
from mmdist.utils.build import build_model

PAIRS = {
    # name: (config, scope, batch kind, images per batch or None for --batch)
    'det': ('configs/demo/det_student_dist.py', 'mmdet', 'det', None),
    'seg': ('configs/demo/seg_student_dist.py', 'mmseg', 'seg', None),
    'two-stage':
    ('configs/mmdet/cascade-mask-rcnn_x101-64x4d_to_'
     'faster-rcnn_r50_fpn_2x_coco_dist.py', 'mmdet', 'det-mask', None),
    # The shipped configs themselves, offline, at small inputs.
    'det-shipped': ('configs/mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_'
                    'dist.py', 'mmdet', 'det', 2),
    'det-mimic': ('configs/mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_'
                  'dist_mimic.py', 'mmdet', 'det', 2),
    'seg-shipped':
    ('configs/mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_'
     '4xb2-80k_cityscapes-512x1024_dist.py', 'mmseg', 'seg-large', 2),
    # Demo-sized DINO pair: the shipped config's R50 student, an R50 DINO
    # teacher, 100 queries (see build_pair); shared distillation queries.
    'dino-demo': ('configs/mmdet/dino-5scale_swin-l_to_dino-4scale_r50_'
                  '8xb2-12e_coco_dist.py', 'mmdet', 'det', 2),
    # The same with the zoo's 900 detection queries, on 256x256 images
    # (1,360 encoder tokens, enough for the two-stage top-900).
    'dino-900': ('configs/mmdet/dino-5scale_swin-l_to_dino-4scale_r50_'
                 '8xb2-12e_coco_dist.py', 'mmdet', 'det', 2),
}
# Image size (H, W) of the pairs whose batch is not the kind's default.
PAIR_SIZES = {'dino-900': (256, 256)}
# Detection queries of each DINO pair (the zoo: 900).
DINO_QUERIES = {'dino-demo': 100, 'dino-900': 900}
# Shared-query options of the DINO pairs (``--queries``; empty: defaults).
QUERY_OPTIONS = {}

# Every shipped teacher: (a config distilling from it, scope, batch kind,
# input height and width). One image; detection at the 384x640.
TEACHERS = {
    'RetinaNet X101-64x4d':
    (PAIRS['det-shipped'][0], 'mmdet', 'det', (384, 640)),
    'Cascade Mask R-CNN X101-64x4d':
    (PAIRS['two-stage'][0], 'mmdet', 'det-mask', (384, 640)),
    'ATSS R101': ('configs/mmdet/atss_r101_to_r50_fpn_1x_coco_dist.py',
                  'mmdet', 'det', (384, 640)),
    'DeepLabV3 R101-d8': (PAIRS['seg-shipped'][0], 'mmseg', 'seg', (256, 512)),
    'SegFormer MiT-B2':
    ('configs/mmseg/segformer_mit-b2_to_deeplabv3_r18-'
     'd8_4xb2-80k_cityscapes-512x1024_dist.py', 'mmseg', 'seg', (256, 512)),
    'ResNet-34': ('configs/mmpretrain/resnet34_to_resnet18_8xb32_in1k_'
                  'dist.py', 'mmpretrain', 'cls', (224, 224)),
    'ResNet-50': ('configs/mmpretrain/resnet50_to_mobilenet-v2_8xb32_in1k_'
                  'dist.py', 'mmpretrain', 'cls', (224, 224)),
    'ResNet-152': ('configs/mmpretrain/resnet152_to_resnet18_8xb32_in1k_'
                   'dist.py', 'mmpretrain', 'cls', (224, 224)),
}


def make_batch(kind: str, batch: int, size=None):
    """A batch of ``kind`` (``det``, ``det-mask``, ``seg``, ``seg-large``,
    ``cls``); ``size`` (H, W) overrides the kind's image size."""
    gen = torch.Generator().manual_seed(0)
    if kind.startswith('det'):
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(
            batch_size=batch,
            image_shapes=[(3, *(size or (128, 128)))] * batch,
            num_items=[4] * batch,
            num_classes=5,
            with_mask=kind == 'det-mask')
    if kind == 'cls':
        from mmpretrain.structures import DataSample
        size = size or (224, 224)
        return dict(
            inputs=[
                torch.randint(
                    0, 256, (3, *size), generator=gen, dtype=torch.uint8)
                for _ in range(batch)
            ],
            data_samples=[
                DataSample().set_gt_label(i % 10) for i in range(batch)
            ])
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    size = size or ((128, 256) if kind == 'seg-large' else (64, 128))
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(
            torch.randint(
                0, 256, (3, *size), generator=gen, dtype=torch.uint8))
        sample = SegDataSample(
            metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, *size), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def median_time(fn, runs: int) -> float:
    fn()  # warm-up
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_pair(path: str,
               scope: str,
               precision: str = 'float32',
               queries: int = 100):
    """The pair's distiller, offline (random weights, seed 0), with the
    teacher in ``precision`` (and ``queries`` detection queries on a DINO
    pair)."""
    cfg = Config.fromfile(path)
    cfg.model.teacher_precision = precision
    strip_pretrained(cfg.model)
    if 'faster-rcnn' in path:
        # Same heads, 5 classes and a small input to keep the run short.
        cfg.model.student.roi_head.bbox_head.num_classes = 5
        cfg.model.teacher = load_teacher_config(cfg.model.teacher)
        strip_pretrained(cfg.model.teacher)
        for head in cfg.model.teacher.roi_head.bbox_head:
            head.num_classes = 5
        cfg.model.teacher.roi_head.mask_head.num_classes = 5
    if 'dino' in path:
        # Demo size: an R50 teacher and, by default, 100 queries on both
        # (128x128 images give 340 encoder tokens, enough for a top-100).
        cfg.model.teacher = load_teacher_config(
            'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py')
        strip_pretrained(cfg.model.teacher)
        cfg.model.teacher_ckpt = None
        for model in (cfg.model.student, cfg.model.teacher):
            model.num_queries = queries
        if QUERY_OPTIONS:
            for term in cfg.model.distill_terms:
                term['queries'] = dict(
                    term.get('queries', {}), **QUERY_OPTIONS)
    init_default_scope(scope)
    torch.manual_seed(0)
    return build_model(cfg)


def teacher_minimal_forward(model,
                            inputs,
                            samples,
                            two_stage: bool,
                            counter=None):
    """Seconds of the teacher's minimal forward in a distillation step (a
    two-stage teacher scores the student's RoIs: the student's loss runs
    first, untimed and uncounted); ``counter`` (a :class:`Counts`) counts
    the forward."""
    with model._recording():
        if two_stage:
            with torch.no_grad():
                model.student.loss(inputs, samples)
        start = time.perf_counter()
        with counter or contextlib.nullcontext():
            model._run_teacher(inputs, samples)
        return time.perf_counter() - start


def still_optim(model) -> OptimWrapper:
    """SGD at lr 0 over ``model``: the update runs at full cost but the
    weights stay, so every run times the same model (a random DINO trained
    on one batch drifts to NaN within a few steps)."""
    return OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.))


def quartiles(values):
    """(median, (q1, q3)) of the per-run values."""
    q1, median, q3 = statistics.quantiles(values, n=4)
    return median, (q1, q3)


def benchmark_teacher(name: str, runs: int) -> dict:
    """The minimal forward of one shipped teacher, float32 and fast.

    Both distillers are built from the same seed; the two forms run
    interleaved on the same image, and the speed-up is taken per run.

    Returns:
        dict: ``float32`` and ``fast`` (median seconds), ``speedup`` and
        ``speedup_iqr`` (float32 / fast per run), ``form`` (the fast form's
        description) and ``size``.
    """
    path, scope, kind, size = TEACHERS[name]
    models = {p: build_pair(path, scope, p) for p in ('float32', 'bf16')}
    data = make_batch(kind, 1, size)
    times = dict(float32=[], bf16=[])
    for run in range(runs + 1):
        for precision, model in models.items():
            model.train()
            processed = model.data_preprocessor(data, True)
            seconds = teacher_minimal_forward(model, processed['inputs'],
                                              processed['data_samples'],
                                              kind == 'det-mask')
            if run:  # the first is a warm-up
                times[precision].append(seconds)
    speedups = [a / b for a, b in zip(times['float32'], times['bf16'])]
    speedup, iqr = quartiles(speedups)
    return dict(
        float32=statistics.median(times['float32']),
        fast=statistics.median(times['bf16']),
        speedup=speedup,
        speedup_iqr=iqr,
        size=size,
        form=models['bf16'].teacher_form.describe())


def benchmark(name: str,
              runs: int,
              batch: int,
              student_first: bool = False,
              fast: bool = False) -> dict:
    """Time one pair's steps, interleaved (see the module docstring).

    Returns:
        dict: Median seconds per part (``student``, ``teacher_minimal``,
        ``distill``, ``stopped``; with ``fast`` also ``teacher_fast`` and
        ``distill_fast``), per-run ratios as ``<key>`` (median) and
        ``<key>_iqr`` (quartiles), and ``teacher_full`` for the two-stage
        pair.
    """
    path, scope, kind, images = PAIRS[name]
    queries = DINO_QUERIES.get(name, 100)
    models = {'float32': build_pair(path, scope, queries=queries)}
    if fast:
        models['fast'] = build_pair(path, scope, 'bf16', queries)
    model = models['float32']
    for each in models.values():
        each.train()
        if student_first:  # the order before the teacher went first
            each.teacher_forward.student_first = True
    data = make_batch(kind, images or batch, PAIR_SIZES.get(name))
    student_optim = still_optim(model.student)
    optims = {key: still_optim(each) for key, each in models.items()}

    def student_step():
        model.student.train_step(data, student_optim)

    def distill_step(key='float32'):
        models[key].train_step(data, optims[key])

    def stopped_step():
        # distill_weight 0 (what DistillWeightHook sets after its stop):
        # the teacher must not run, so this should cost a student step.
        model.distill_weight = 0.0
        try:
            model.train_step(data, optims['float32'])
        finally:
            model.distill_weight = 1.0

    processed = model.data_preprocessor(data, True)
    inputs, samples = processed['inputs'], processed['data_samples']

    def teacher_minimal(key='float32'):
        return teacher_minimal_forward(models[key], inputs, samples,
                                       name == 'two-stage')

    def timed(fn, *args):
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    # Interleaved, so that drifts of the machine hit all of them alike.
    parts = dict(
        student=lambda: timed(student_step),
        teacher_minimal=teacher_minimal,
        distill=lambda: timed(distill_step),
        stopped=lambda: timed(stopped_step))
    if fast:
        parts.update(
            teacher_fast=lambda: teacher_minimal('fast'),
            distill_fast=lambda: timed(distill_step, 'fast'))
    times = {key: [] for key in parts}
    for run in range(runs + 2):
        for key, part in parts.items():
            seconds = part()
            if run >= 2:  # warm-up
                times[key].append(seconds)
    result = {key: statistics.median(value) for key, value in times.items()}
    # Ratios per interleaved repetition: their median and quartiles say how
    # far the machine's noise reaches (a change is real when the quartile
    # ranges of two versions do not overlap).
    ratios = dict(
        ratio=[
            d / (s + t) for s, t, d in zip(
                times['student'], times['teacher_minimal'], times['distill'])
        ],
        stopped_ratio=[
            x / s for s, x in zip(times['student'], times['stopped'])
        ],
        step_ratio=[d / s for s, d in zip(times['student'], times['distill'])])
    if fast:
        ratios.update(
            teacher_speedup=[
                a / b for a, b in zip(times['teacher_minimal'],
                                      times['teacher_fast'])
            ],
            fast_step_ratio=[
                d / s for s, d in zip(times['student'], times['distill_fast'])
            ])
    for key, values in ratios.items():
        result[key], result[f'{key}_iqr'] = quartiles(values)
    if name == 'two-stage':
        teacher_samples = [s.clone() for s in samples]

        def teacher_full():
            with torch.no_grad():
                model.teacher.loss(inputs, teacher_samples)

        result['teacher_full'] = median_time(teacher_full, runs)
    return result


class _OpCount(TorchDispatchMode):
    """Counts the ATen operators dispatched (on a GPU, about one kernel
    launch each)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class Counts:
    """Context manager counting FLOPs and dispatched operators; read
    ``result`` (``(flops, ops)``) after it exits."""

    def __enter__(self):
        self.flops, self.ops = FlopCounterMode(display=False), _OpCount()
        self.flops.__enter__()
        self.ops.__enter__()
        return self

    def __exit__(self, *exc):
        self.ops.__exit__(*exc)
        self.flops.__exit__(*exc)
        self.result = (self.flops.get_total_flops(), self.ops.count)


def count_pair(name: str, batch: int) -> dict:
    """FLOPs and operator counts of one pair's parts (see ``--count``).

    Deterministic, unlike the timings: FLOPs say what the extra work costs
    where the arithmetic dominates, operator counts where launches do (a
    GPU at small shapes). Counted on the second call of each part.

    Returns:
        dict: ``(flops, ops)`` per part (``student``, ``teacher_minimal``,
        ``distill``).
    """
    path, scope, kind, images = PAIRS[name]
    model = build_pair(path, scope, queries=DINO_QUERIES.get(name, 100))
    model.train()
    data = make_batch(kind, images or batch, PAIR_SIZES.get(name))
    processed = model.data_preprocessor(data, True)
    student_optim, optim = still_optim(model.student), still_optim(model)

    def student(counter):
        with counter:
            model.student.train_step(data, student_optim)

    def teacher_minimal(counter):
        teacher_minimal_forward(model, processed['inputs'],
                                processed['data_samples'], name == 'two-stage',
                                counter)

    def distill(counter):
        with counter:
            model.train_step(data, optim)

    counts = {}
    for part in (student, teacher_minimal, distill):
        part(Counts())  # warm-up (lazy buffers, first-call caches)
        counter = Counts()
        part(counter)
        counts[part.__name__] = counter.result
    return counts


def print_counts(pairs, batch: int) -> None:
    """The table of :func:`count_pair` for ``pairs``."""
    print('FLOPs and dispatched operators of each part, one call after a '
          'warm-up; ratio = distill / (student + teacher minimal)')
    print('| pair | student GFLOP | teacher minimal GFLOP | distill GFLOP '
          '| FLOP ratio | student ops | teacher minimal ops | distill ops '
          '| op ratio |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for name in pairs:
        c = count_pair(name, batch)
        (sf, so), (tf, to), (df, do) = (
            c[k] for k in ('student', 'teacher_minimal', 'distill'))
        print(
            f'| {name} | {sf / 1e9:.2f} | {tf / 1e9:.2f} | {df / 1e9:.2f} '
            f'| {df / (sf + tf):.3f} | {so} | {to} | {do} '
            f'| {do / (so + to):.3f} |',
            flush=True)


def print_teachers(runs: int) -> None:
    """The table of :func:`benchmark_teacher` for every shipped teacher."""
    print(f'teacher minimal forward on {torch.get_num_threads()} CPU '
          f'thread(s), one image, random weights, {runs} interleaved runs '
          'after a warm-up; times are medians, the speed-up the median '
          '[quartiles] of the per-run float32 / fast')
    print('| teacher | input | float32 | fast | speed-up [quartiles] |')
    print('| --- | --- | --- | --- | --- |')
    form = None
    for name in TEACHERS:
        r = benchmark_teacher(name, runs)
        q1, q3 = r['speedup_iqr']
        print(
            f'| {name} | 1x3x{r["size"][0]}x{r["size"][1]} | '
            f'{1000 * r["float32"]:.0f} ms | {1000 * r["fast"]:.0f} ms | '
            f'{r["speedup"]:.2f}x [{q1:.2f}, {q3:.2f}] |',
            flush=True)
        form = r['form']
    print(f'fast = teacher_precision=\'bf16\' ({form}; the fold count is '
          'the last teacher\'s)')


def compile_check(runs: int) -> None:
    """``torch.compile`` of a fast-form teacher (torchvision's ResNet-50 at
    1x3x224x224): compile cost against the per-forward gain."""
    import torchvision

    from mmdist.distillers.fast_form import make_fast
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    image = torch.randn(1, 3, 224, 224)
    form = make_fast(
        model, torch.bfloat16, lambda: model(image), outputs=['fc'])
    compiled = torch.compile(model)

    def forward(net):
        with torch.no_grad(), form.autocast('cpu'):
            return net(form.prepare(image))

    start = time.perf_counter()
    forward(compiled)
    first = time.perf_counter() - start
    times = dict(eager=[], compiled=[])
    for _ in range(runs):
        for key, net in (('eager', model), ('compiled', compiled)):
            start = time.perf_counter()
            forward(net)
            times[key].append(time.perf_counter() - start)
    eager, fast = (statistics.median(times[k]) for k in times)
    gain = eager - fast
    verdict = (f'pays back after {first / gain:.0f} forwards'
               if gain > 0 else 'never pays back')
    diff = float((forward(compiled) - forward(model)).abs().max())
    print(f'torch.compile of the fast ResNet-50 on {torch.get_num_threads()}'
          f' thread(s): first call {first:.1f} s, then {1000 * fast:.0f} ms '
          f'against {1000 * eager:.0f} ms eager ({eager / fast:.2f}x); '
          f'{verdict}; largest logit difference {diff:.3g}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--pairs', nargs='+', default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument(
        '--student-first',
        action='store_true',
        help='run the student before the whole teacher (the order of '
        'mmdist <= 0.1), for comparison')
    parser.add_argument(
        '--fast',
        action='store_true',
        help="also build every pair with teacher_precision='bf16' and "
        'compare the steps')
    parser.add_argument(
        '--teachers',
        action='store_true',
        help='time the minimal forward of every shipped teacher, float32 '
        'against the fast form, instead of the pairs')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='measure torch.compile on top of the fast form once')
    parser.add_argument(
        '--count',
        action='store_true',
        help='count FLOPs and dispatched operators of each part instead of '
        'timing them (deterministic; operators stand for GPU launches)')
    parser.add_argument(
        '--queries',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='options of the DINO pairs\' shared queries, e.g. '
        'num_random=50 num_teacher=50 (default: the term\'s defaults)')
    args = parser.parse_args()
    for option in args.queries:
        key, value = option.split('=', 1)
        QUERY_OPTIONS[key] = int(value) if value.isdigit() else value
    if args.count:
        print_counts(args.pairs, args.batch)
        return
    if args.compile:
        compile_check(args.runs)
        return
    if args.teachers:
        print_teachers(args.runs)
        return
    print(f'training step on {torch.get_num_threads()} CPU threads, batch '
          f'{args.batch} (shipped pairs: 2), {args.runs} interleaved runs '
          'after a warm-up; times are medians, ratios the median [quartiles]'
          ' of the per-run ratios')
    fast_header = (f' {"teacher f32/fast":>22} {"step/student f32":>22} '
                   f'{"step/student fast":>22}' if args.fast else '')
    print(f'{"pair":<12} {"student":>9} {"teacher min":>11} '
          f'{"distill":>9} {"ratio [quartiles]":>22} {"stopped":>9} '
          f'{"ratio [quartiles]":>22} {"teacher full":>12}{fast_header}')
    for name in args.pairs:
        r = benchmark(name, args.runs, args.batch, args.student_first,
                      args.fast)
        full = (f'{1000 * r["teacher_full"]:9.0f} ms'
                if 'teacher_full' in r else ' ' * 12)

        def ratio(key):
            q1, q3 = r[f'{key}_iqr']
            return f'{r[key]:.3f} [{q1:.3f}, {q3:.3f}]'

        fast = (f' {ratio("teacher_speedup"):>22} {ratio("step_ratio"):>22} '
                f'{ratio("fast_step_ratio"):>22}' if args.fast else '')
        print(
            f'{name:<12} {1000 * r["student"]:6.0f} ms '
            f'{1000 * r["teacher_minimal"]:8.0f} ms '
            f'{1000 * r["distill"]:6.0f} ms {ratio("ratio"):>22} '
            f'{1000 * r["stopped"]:6.0f} ms {ratio("stopped_ratio"):>22} '
            f'{full}{fast}',
            flush=True)
    print('ratio = distill step / (student step + teacher minimal forward); '
          'stopped = distillation stopped (distill_weight 0), ratio to the '
          'student step' +
          ("; fast = teacher_precision='bf16'; step/student = the "
           'distillation step over the student\'s own step' if args.
           fast else ''))


if __name__ == '__main__':
    main()
