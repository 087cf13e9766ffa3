"""Benchmark the distiller's training step against its parts.

For each model pair the script times, on the same batch:

- the student's own training step (forward, loss, backward, update),
- the teacher's minimal forward (what the distiller runs for it),
- the distiller's training step,

and prints ``distill / (student + teacher minimal)`` (the overhead of the
distiller itself: hooks, renormalisation, the loss). For the two-stage pair
it also times the teacher's full ``loss()`` (RPN, sampler, all heads and
losses), which a distiller that simply ran the teacher would pay.

Timings are medians of several interleaved runs after a warm-up, in one
process.

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
    # name: (config, scope, batch builder)
    'det': ('configs/demo/det_student_dist.py', 'mmdet', 'det'),
    'seg': ('configs/demo/seg_student_dist.py', 'mmseg', 'seg'),
    'two-stage': ('configs/mmdet/cascade-mask-rcnn_x101-64x4d_to_'
                  'faster-rcnn_r50_fpn_2x_coco_dist.py', 'mmdet', 'det-mask'),
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
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, 64, 128), generator=gen,
                                    dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(
            img_shape=(64, 128), ori_shape=(64, 128), pad_shape=(64, 128)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, 64, 128), generator=gen))
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


def benchmark(name: str, runs: int, batch: int) -> dict:
    path, scope, kind = PAIRS[name]
    model = build_pair(path, scope)
    model.train()
    data = make_batch(kind, batch)
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
    result['ratio'] = result['distill'] / (
        result['student'] + result['teacher_minimal'])
    result['stopped_ratio'] = result['stopped'] / result['student']
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
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--batch', type=int, default=4)
    args = parser.parse_args()
    print(f'training step on {torch.get_num_threads()} CPU threads, batch '
          f'{args.batch}, median of {args.runs} runs after a warm-up')
    print(f'{"pair":<10} {"student step":>13} {"teacher min":>12} '
          f'{"distill step":>13} {"ratio":>7} {"stopped step":>13} '
          f'{"ratio":>7} {"teacher full":>13}')
    for name in args.pairs:
        r = benchmark(name, args.runs, args.batch)
        full = (f'{1000 * r["teacher_full"]:10.0f} ms'
                if 'teacher_full' in r else '')
        print(f'{name:<10} {1000 * r["student"]:10.0f} ms '
              f'{1000 * r["teacher_minimal"]:9.0f} ms '
              f'{1000 * r["distill"]:10.0f} ms {r["ratio"]:7.3f} '
              f'{1000 * r["stopped"]:10.0f} ms {r["stopped_ratio"]:7.3f} '
              f'{full}')
    print('ratio = distill step / (student step + teacher minimal forward); '
          'stopped = distillation stopped (distill_weight 0), ratio to the '
          'student step')


if __name__ == '__main__':
    main()
