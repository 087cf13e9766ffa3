"""What the build-time shape probe adds to building a distiller.

For each shipped config (random weights, nothing downloaded) the script
builds the distiller once, then times, on the built student and teacher,
the expansion of its terms with the probe forward and without it, and
prints the probe's time and its share of the whole build.

Timings are medians of ``--runs`` interleaved runs, in one process.

Usage:
    python .dev_scripts/benchmark_probe.py [--runs 3] [CONFIG ...]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))

from helpers import build, load_offline  # noqa: E402
from mmdist.distillers.expand import expand_terms  # noqa: E402

CONFIGS = (
    'mmdet/retinanet_x101-64x4d_to_r50_fpn_2x_coco_dist.py',
    'mmdet/atss_r101_to_r50_fpn_1x_coco_dist.py',
    'mmseg/deeplabv3_r101-d8_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-'
    '512x1024_dist.py',
    'mmseg/segformer_mit-b2_to_deeplabv3_r18-d8_4xb2-80k_cityscapes-'
    '512x1024_dist.py',
    'mmpretrain/resnet152_to_resnet18_8xb32_in1k_dist.py',
)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='*', default=CONFIGS)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()
    print('| config | build (s) | probe (s) | probe / build |')
    print('| --- | ---: | ---: | ---: |')
    for path in args.configs:
        cfg = load_offline(path)
        # The probe runs before the teacher is put in its fast form.
        cfg.model.teacher_precision = 'float32'
        built = []
        build_s = seconds(lambda: built.append(build(cfg)))
        model = built[0]
        terms = cfg.model.get('distill_terms')
        with_probe, without = [], []
        for _ in range(args.runs):
            with_probe.append(
                seconds(lambda: expand_terms(
                    terms, model.student, model.teacher, log=False)))
            without.append(
                seconds(lambda: expand_terms(
                    terms,
                    model.student,
                    model.teacher,
                    log=False,
                    probe=False)))
        probe_s = statistics.median(with_probe) - statistics.median(without)
        print(f'| {path} | {build_s:.2f} | {probe_s:.3f} | '
              f'{probe_s / build_s:.1%} |')


if __name__ == '__main__':
    main()
