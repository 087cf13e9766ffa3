"""Benchmark the distiller's training step against its parts.

For each model pair the script times, on the same batch:

- the student's own training step (forward, loss, backward, update),
- the teacher's minimal forward (what the distiller runs for it),
- the distiller's training step,

and prints ``distill / (student + teacher minimal)`` (the overhead of the
distiller itself: hooks, renormalisation, the loss). For the two-stage pair
it also times the teacher's full ``loss()`` (RPN, sampler, all heads and
losses), which a distiller that simply ran the teacher would pay.

Timings are medians of ``--runs`` interleaved runs after a warm-up, in one
process; the ratios are computed per run and printed as median and
quartiles, so the spread of this machine's noise is visible beside them.

Usage:
    python tools/analysis/benchmark_step.py [--pairs det seg two-stage]
        [--runs 10]
"""
import argparse
import statistics
import time

import mmdist  # noqa: F401
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope

from mmdist.distillers import load_teacher_config
from mmdist.testing import strip_pretrained
from mmdist.utils.build import build_model

PAIRS = {
    # name: (config, scope, batch kind, images per batch or None for --batch)
    'det': ('configs/demo/det_student_dist.py', 'mmdet', 'det', None),
    'seg': ('configs/demo/seg_student_dist.py', 'mmseg', 'seg', None),
    'two-stage': ('configs/mmdet/cascade-mask-rcnn_x101-64x4d_to_'
                  'faster-rcnn_r50_fpn_2x_coco_dist.py', 'mmdet', 'det-mask',
                  None),
    # The shipped configs themselves, offline, at small inputs.
    'det-shipped': ('configs/mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_'
                    'dist.py', 'mmdet', 'det', 2),
    'det-mimic': ('configs/mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_'
                  'dist_mimic.py', 'mmdet', 'det', 2),
    'seg-shipped': ('configs/mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_'
                    '4xb2-80k_cityscapes-512x1024_dist.py', 'mmseg',
                    'seg-large', 2),
}


def make_batch(kind: str, batch: int):
    gen = torch.Generator().manual_seed(0)
    if kind.startswith('det'):
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch_size=batch,
                              image_shapes=[(3, 128, 128)] * batch,
                              num_items=[4] * batch, num_classes=5,
                              with_mask=kind == 'det-mask')
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    size = (128, 256) if kind == 'seg-large' else (64, 128)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, *size), generator=gen,
                                    dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(
            img_shape=size, ori_shape=size, pad_shape=size))
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


def build_pair(path: str, scope: str):
    cfg = Config.fromfile(path)
    strip_pretrained(cfg.model)
    if 'faster-rcnn' in path:
        # Same heads, 5 classes and a small input to keep the run short.
        cfg.model.student.roi_head.bbox_head.num_classes = 5
        cfg.model.teacher = load_teacher_config(cfg.model.teacher)
        strip_pretrained(cfg.model.teacher)
        for head in cfg.model.teacher.roi_head.bbox_head:
            head.num_classes = 5
        cfg.model.teacher.roi_head.mask_head.num_classes = 5
    init_default_scope(scope)
    return build_model(cfg)


def benchmark(name: str, runs: int, batch: int,
              student_first: bool = False) -> dict:
    path, scope, kind, images = PAIRS[name]
    model = build_pair(path, scope)
    model.train()
    if student_first:  # the order before the teacher went first
        model.teacher_forward.student_first = True
    data = make_batch(kind, images or batch)
    student_optim = OptimWrapper(
        torch.optim.SGD(model.student.parameters(), lr=1e-4))
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-4))

    def student_step():
        model.student.train_step(data, student_optim)

    def distill_step():
        model.train_step(data, optim)

    def stopped_step():
        # distill_weight 0 (what DistillWeightHook sets after its stop):
        # the teacher must not run, so this should cost a student step.
        model.distill_weight = 0.0
        try:
            model.train_step(data, optim)
        finally:
            model.distill_weight = 1.0

    processed = model.data_preprocessor(data, True)
    inputs, samples = processed['inputs'], processed['data_samples']

    def teacher_minimal():
        with model._recording():
            if name == 'two-stage':  # the teacher scores the student's RoIs
                with torch.no_grad():
                    model.student.loss(inputs, samples)
                start = time.perf_counter()
                model._run_teacher(inputs, samples)
                return time.perf_counter() - start
            start = time.perf_counter()
            model._run_teacher(inputs, samples)
            return time.perf_counter() - start

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    # Interleaved, so that drifts of the machine hit all of them alike.
    times = dict(student=[], teacher_minimal=[], distill=[], stopped=[])
    for run in range(runs + 2):
        samples_ = (timed(student_step), teacher_minimal(),
                    timed(distill_step), timed(stopped_step))
        if run >= 2:  # warm-up
            for key, value in zip(times, samples_):
                times[key].append(value)
    result = {key: statistics.median(value) for key, value in times.items()}
    # Ratios per interleaved repetition: their median and quartiles say how
    # far the machine's noise reaches (a change is real when the quartile
    # ranges of two versions do not overlap).
    ratios = [d / (s + t) for s, t, d in zip(
        times['student'], times['teacher_minimal'], times['distill'])]
    stopped = [x / s for s, x in zip(times['student'], times['stopped'])]
    for key, values in (('ratio', ratios), ('stopped_ratio', stopped)):
        q1, median, q3 = statistics.quantiles(values, n=4)
        result[key], result[f'{key}_iqr'] = median, (q1, q3)
    if name == 'two-stage':
        teacher_samples = [s.clone() for s in samples]

        def teacher_full():
            with torch.no_grad():
                model.teacher.loss(inputs, teacher_samples)

        result['teacher_full'] = median_time(teacher_full, runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS),
                        choices=list(PAIRS))
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument(
        '--student-first', action='store_true',
        help='run the student before the whole teacher (the order of '
        'mmdist <= 0.1), for comparison')
    args = parser.parse_args()
    print(f'training step on {torch.get_num_threads()} CPU threads, batch '
          f'{args.batch} (shipped pairs: 2), {args.runs} interleaved runs '
          'after a warm-up; times are medians, ratios the median [quartiles]'
          ' of the per-run ratios')
    print(f'{"pair":<12} {"student":>9} {"teacher min":>11} '
          f'{"distill":>9} {"ratio [quartiles]":>22} {"stopped":>9} '
          f'{"ratio [quartiles]":>22} {"teacher full":>12}')
    for name in args.pairs:
        r = benchmark(name, args.runs, args.batch, args.student_first)
        full = (f'{1000 * r["teacher_full"]:9.0f} ms'
                if 'teacher_full' in r else '')

        def ratio(key):
            q1, q3 = r[f'{key}_iqr']
            return f'{r[key]:.3f} [{q1:.3f}, {q3:.3f}]'

        print(f'{name:<12} {1000 * r["student"]:6.0f} ms '
              f'{1000 * r["teacher_minimal"]:8.0f} ms '
              f'{1000 * r["distill"]:6.0f} ms {ratio("ratio"):>22} '
              f'{1000 * r["stopped"]:6.0f} ms {ratio("stopped_ratio"):>22} '
              f'{full}')
    print('ratio = distill step / (student step + teacher minimal forward); '
          'stopped = distillation stopped (distill_weight 0), ratio to the '
          'student step')


if __name__ == '__main__':
    main()
